"""The provider's algorithms, in Toolbox order. Their ids (d3rsmde:<name>) are a stable API."""
from .estimate_depth import EstimateDepth
from .estimate_depth_folder import EstimateDepthFolder
from .evaluate import EvaluateDepth
from .finetune import FinetuneRegion

ALGORITHMS = (EstimateDepth, EstimateDepthFolder, FinetuneRegion, EvaluateDepth)
