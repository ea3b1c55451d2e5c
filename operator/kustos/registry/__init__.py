"""MLflow Model Registry: ``models:/`` URIs resolved over MLflow's REST API (no mlflow
import in the operator). uri.py parses, client.py talks to the registry, resolution.py
turns a model version into what the fetch init container downloads."""
