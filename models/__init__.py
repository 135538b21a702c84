"""storyline.models: domain types, errors, the model registry and the inference stages.

Heavy modules (onnxruntime sessions, spaCy, training code) are imported lazily by the
callers that need them; importing this package is cheap and never imports torch.
"""

from storyline.models.errors import (
    ConflictError,
    InvalidArticle,
    InvalidInput,
    ModelBuildError,
    ModelUnavailable,
    NotFound,
    NotImplementedStage,
    Overloaded,
    StoreError,
    StorylineError,
)
from storyline.models.protocols import ActorExtractor, Embedder, StanceTagger, Summariser
from storyline.models.types import (
    Actor,
    ActorMention,
    ActorStance,
    Article,
    Evidence,
    Portrayal,
    Position,
    Stance,
    Statement,
    Summary,
    SummarySentence,
    TowardStance,
)

__all__ = [
    "Actor",
    "ActorExtractor",
    "ActorMention",
    "ActorStance",
    "Article",
    "ConflictError",
    "Embedder",
    "Evidence",
    "InvalidArticle",
    "InvalidInput",
    "ModelBuildError",
    "ModelUnavailable",
    "NotFound",
    "NotImplementedStage",
    "Overloaded",
    "Portrayal",
    "Position",
    "Stance",
    "StanceTagger",
    "Statement",
    "StoreError",
    "StorylineError",
    "Summariser",
    "Summary",
    "SummarySentence",
    "TowardStance",
]
