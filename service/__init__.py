"""storyline.service: settings, pipeline orchestration, CLI, HTTP app, digest, evaluation."""

from storyline.service.settings import Settings

__all__ = ["Settings"]
