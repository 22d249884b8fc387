import atexit
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns on every random-init model

TINY = {"backbone": {"model": "dpl-tiny", "pretrained": None}}


# Tiny models are overhead-bound: one thread is faster and immune to a busy neighbour.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(overrides: dict | None = None) -> dict:
    """Overrides for a method on the tiny random-init CLIP (merged over TINY)."""
    out = {k: dict(v) for k, v in TINY.items()}
    for k, v in (overrides or {}).items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


# Class names the tests use: test_methods' four, and the synthetic benchmark's.
LLM_TEST_CLASSES = ["dog", "cat", "red car", "sunflower"]


@functools.lru_cache(maxsize=1)
def tiny_llm() -> str:
    """A tiny random Llama (built once per test session, as `dplbench llm tiny` would)."""
    from dplbench.data.synth import WORDS
    from dplbench.llm.tiny import make_tiny_llm

    root = Path(tempfile.mkdtemp(prefix="dpl-llm-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    names = LLM_TEST_CLASSES + [w.replace("_", " ") for w in WORDS]
    return str(make_tiny_llm(root / "model", names))


@functools.lru_cache(maxsize=2)
def tiny_llm_cache(recipe: str = "drople") -> str:
    """The tiny LLM's knowledge cache for the `synthetic` dataset, made with a release's recipe
    (as `dplbench llm cache --recipe` would; short descriptions, fp32)."""
    from dplbench.data.synth import WORDS
    from dplbench.llm.build import build_cache
    from dplbench.llm.phrases import write_standin_pipeline

    model = Path(tiny_llm())
    names = LLM_TEST_CLASSES + [w.replace("_", " ") for w in WORDS]
    out = model.parent / f"cache-{recipe}"
    phrases = model.parent / "phrases"  # spaCy's path (spacy.load, noun_chunks), no download
    if not phrases.is_dir():
        write_standin_pipeline(str(phrases))
    build_cache(
        str(model), {"synthetic": names}, out, dtype="fp32", max_new_tokens=6, recipe=recipe,
        phrases=f"spacy:{phrases}",
    )  # fmt: skip
    return str(out)


def llm_overrides(name: str) -> dict:
    """What a method with the LLM prompt source needs on top of tiny(): the tiny LLM (instead of
    its release's) and a cache made from it with the method's recipe."""
    from dpl.methods import METHODS

    spec = METHODS.get(name)
    if spec.uses_llm:
        recipe = spec.defaults.llm.recipe
        return {"llm": {"cache": tiny_llm_cache(recipe), "model": tiny_llm()}}
    return {}


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible server on loopback (moto) for the session; the AWS environment points at
    it while it runs (pyarrow's and boto3's clients read it)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def s3_bucket(name: str) -> str:
    """A new bucket on the session's S3 server (s3_endpoint), as a URI."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
