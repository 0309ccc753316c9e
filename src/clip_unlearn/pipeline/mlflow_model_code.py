"""MLflow's "models from code" entry point for a registered CLIP version (mlflow_model.py): MLflow
copies this file into the logged model and runs it when the model is loaded."""

from mlflow.models import set_model

from clip_unlearn.pipeline.mlflow_model import ClipPyfunc

set_model(ClipPyfunc())
