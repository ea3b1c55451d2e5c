"""Setup problems the sidecar reports in /v1/explainer/status instead of exiting."""

from __future__ import annotations

# Reasons of /v1/explainer/status "error" (the operator copies them into conditions).
BACKGROUND_FETCH_FAILED = "BackgroundFetchFailed"
DIGEST_MISMATCH = "DigestMismatch"
BACKGROUND_INVALID = "BackgroundInvalid"
METHOD_UNSUPPORTED = "MethodUnsupported"
MODEL_LOAD_FAILED = "ModelLoadFailed"
FEATURE_NAMES_INVALID = "FeatureNamesInvalid"

# Problems that the same inputs can never fix: the sidecar stops retrying them.
PERMANENT = frozenset({METHOD_UNSUPPORTED, MODEL_LOAD_FAILED, FEATURE_NAMES_INVALID})


class SetupProblem(Exception):
    """Why the explainer cannot work yet; ``message`` says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}
