for round in 1 2; do
  for c in 6067c77 b1aa0f2 974de92; do
    cd /tmp/wt-$c && PYTHONPATH=/tmp/wt-$c/backend:/tmp/wt-$c /work/main/.venv/bin/python -m benchmarks.raster --device cpu \
      --weights /work/main/resources/weights/d3rsmde-lean.safetensors --sizes 1,4.194304 --out /tmp/ab3/$c-$round > /tmp/ab3-$c-$round.log 2>&1
    grep "^| 1000\|^| 2048" /tmp/ab3/$c-$round/raster.md | sed "s/^/$c r$round /"
  done
done
echo DONE
