"""Operations surfaces checked without Docker: what the image build reads and where the
container writes, the compose file's build and stop settings, the OpenAPI examples, and the
Ray engine's errors."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str | None, str, str]]:
    """(stage, INSTRUCTION, arguments) for each instruction of the Dockerfile."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out: list[tuple[str | None, str, str]] = []
    stage: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.search(r"\sAS\s+(\S+)", line, re.I)
            stage = m.group(1) if m else None
        out.append((stage, word, rest.strip()))
    return out


def _pattern(pat: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` any folders, ``*`` / ``?`` within one."""
    out = ""
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: a path is left out when it or a folder above it matches the
    last pattern that applies (``!`` re-includes)."""
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pat in patterns:
        neg = pat.startswith("!")
        rx = _pattern(pat.lstrip("!").strip("/"))
        if any(rx.match(p) for p in prefixes):
            out = not neg
    return out


def _dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [ln.strip() for ln in path.read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def _copy_args(args: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(args)
    flags = {w[2:].split("=", 1)[0]: w.split("=", 1)[1] for w in words if w.startswith("--")}
    return flags, [w for w in words if not w.startswith("--")]


def test_every_copy_from_the_build_context_exists_and_is_not_dockerignored() -> None:
    patterns = _dockerignore()
    sources = []
    for _, word, args in _instructions():
        if word not in ("COPY", "ADD"):
            continue
        flags, paths = _copy_args(args)
        if "from" in flags:
            continue
        sources += paths[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"


def test_named_build_contexts_are_passed_by_compose_and_the_readme() -> None:
    stages = {s for s, w, _ in _instructions() if w == "FROM" and s}
    named = {flags["from"] for _, w, a in _instructions() if w == "COPY"
             for flags in [_copy_args(a)[0]] if "from" in flags} - stages
    assert named == {"shared-data"}
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    build = compose["services"]["api"]["build"]
    assert isinstance(build, dict), "`build: .` cannot pass the named contexts the image needs"
    contexts = build.get("additional_contexts") or {}
    readme = (ROOT / "README.md").read_text()
    for name in named:
        assert name in contexts, f"compose build lacks the {name} context"
        # the same folder the README's docker build passes
        m = re.search(rf"--build-context {name}=(\S+)", readme)
        assert m and contexts[name] == m.group(1)


def test_the_volume_is_owned_by_the_service_user_before_it_is_declared() -> None:
    runtime = [(w, a) for s, w, a in _instructions() if s == "runtime"]
    user = [a for w, a in runtime if w == "USER"][-1]
    uid = user.split(":")[0]
    env = " ".join(a for w, a in runtime if w == "ENV")
    data_dir = re.search(r"STORYLINE_DATA_DIR=(\S+)", env)
    assert data_dir is not None
    volumes = [v for w, a in runtime if w == "VOLUME" for v in re.findall(r"\"([^\"]+)\"", a)]
    assert data_dir.group(1) in volumes
    vol_at = next(i for i, (w, _) in enumerate(runtime) if w == "VOLUME")
    before = " ".join(a for w, a in runtime[:vol_at] if w == "RUN")
    for vol in volumes:
        # a volume over a path the image lacks starts root-owned: the user cannot write it
        assert re.search(rf"mkdir -p (\S+ )*{re.escape(vol)}\b", before), vol
        assert re.search(rf"chown (-R )?({uid}|storyline)(:\S+)? (\S+ )*{re.escape(vol)}\b",
                         before), vol


def test_models_copied_from_the_builder_are_where_the_runtime_looks() -> None:
    ins = _instructions()
    builder_env = " ".join(a for s, w, a in ins if s == "builder" and w == "ENV")
    runtime_env = " ".join(a for s, w, a in ins if s == "runtime" and w == "ENV")
    built = re.search(r"STORYLINE_DATA_DIR=(\S+)", builder_env)
    served = re.search(r"STORYLINE_MODELS_DIR=(\S+)", runtime_env)
    assert built and served
    copies = [_copy_args(a) for s, w, a in ins if s == "runtime" and w == "COPY"]
    models = [(f, p) for f, p in copies if f.get("from") == "builder" and "models" in p[0]]
    assert models, "the runtime stage copies no models"
    flags, paths = models[0]
    assert paths == [f"{built.group(1)}/models", served.group(1)]
    user = [a for s, w, a in ins if s == "runtime" and w == "USER"][-1]
    assert flags.get("chown", "").split(":")[0] == user.split(":")[0]
    assert "HF_HUB_OFFLINE=1" in runtime_env


def test_healthcheck_probes_the_configured_port() -> None:
    check = next(a for s, w, a in _instructions() if s == "runtime" and w == "HEALTHCHECK")
    assert "/health/ready" in check
    # a fixed :8000 is unhealthy as soon as STORYLINE_PORT moves the server
    assert "STORYLINE_PORT" in check


def test_compose_waits_longer_than_the_servers_graceful_shutdown() -> None:
    cli = (ROOT / "service" / "cli.py").read_text()
    m = re.search(r"timeout_graceful_shutdown=(\d+)", cli)
    assert m is not None
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    grace = str(compose["services"]["api"].get("stop_grace_period", "10s"))
    g = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert g is not None, grace
    seconds = int(g.group(1) or 0) * 60 + int(g.group(2) or 0)
    assert seconds > int(m.group(1)), "Docker would SIGKILL a draining server"


# -- OpenAPI ----------------------------------------------------------------------------------
def _openapi_examples(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            media_sets = [("request", op.get("requestBody", {}).get("content", {}))]
            media_sets += [(status, r.get("content", {})) for status, r in op["responses"].items()]
            for where, content in media_sets:
                for ctype, media in content.items():
                    for name, ex in (media.get("examples") or {}).items():
                        if "schema" in media:
                            out.append((f"{method.upper()} {path} {where} {ctype} {name}",
                                        media["schema"], ex["value"]))
    return out


def test_openapi_examples_validate_against_their_schemas(tmp_path: Path) -> None:
    import jsonschema
    from litestar.testing import TestClient

    from storyline.service.api.app import create_app
    from storyline.service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "none", model_process=False))
    with TestClient(app) as c:
        spec = c.get("/schema/openapi.json").json()
    examples = _openapi_examples(spec)
    assert len(examples) > 20
    bad = []
    for where, schema, value in examples:
        full = {**schema, "components": spec["components"]}
        v = jsonschema.Draft202012Validator(full, format_checker=jsonschema.FormatChecker())
        errs = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in v.iter_errors(value)]
        if errs:
            bad.append((where, errs[:3]))
    assert not bad, bad


# -- Ray engine -------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_worker_errors_reach_the_driver_as_storyline_errors(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from storyline.models.errors import ModelUnavailable
    from storyline.models.types import Article
    from storyline.service import ray_engine

    with ray_engine.ray_session(None, num_cpus=1) as ray, \
            pytest.raises(ModelUnavailable) as err:
        ray_engine.embed_articles(ray, [Article(id="a", text="some text")],
                                  models_dir=tmp_path / "no-models", threads=1,
                                  embed_batch_size=8, workers=1)
    assert "not built" in err.value.detail
    assert "Traceback" not in err.value.detail and "\n" not in err.value.detail


def test_ray_job_errors_without_a_storyline_cause_are_one_line() -> None:
    from storyline.models.errors import InvalidInput, ModelUnavailable, StorylineError
    from storyline.service.ray_engine import _job_error

    wrapped = RuntimeError("UDF failed")
    wrapped.__cause__ = InvalidInput("articles[0].text: must not be empty")
    assert isinstance(_job_error(wrapped), InvalidInput)
    text = ("The actor died because of an error raised in its creation task\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
            "storyline.models.errors.ModelUnavailable: model 'm' is not built in /m\n")
    err = _job_error(RuntimeError(text))
    assert type(err) is ModelUnavailable and err.detail == "model 'm' is not built in /m"
    assert err.exit_code == 5
    # a chained traceback: the worker's own error comes first, Ray's wrapper after it
    chained = ("ray::MapWorker.submit() (pid=1)\n  File \"w.py\", line 5, in __call__\n"
               "storyline.models.errors.InvalidInput: bad batch\n\nThe above exception was "
               "the direct cause of the following exception:\n\n"
               "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
               "To change retry attempts, configure it if you believe this to be transient.")
    err = _job_error(RuntimeError(chained))
    assert type(err) is InvalidInput and err.detail == "bad batch"
    other = _job_error(RuntimeError("ray::X (pid=1)\n  File \"w.py\"\nMemoryError: out of "
                                    "memory\n\nray.exceptions.UserCodeException: UDF failed"))
    assert type(other) is StorylineError
    assert other.detail == "the Ray job failed: MemoryError: out of memory"
