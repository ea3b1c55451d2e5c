"""The explainer sidecar (`kustos explain`): SHAP attributions next to `kustos serve`."""
