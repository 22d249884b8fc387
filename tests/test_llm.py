"""The LLM prompt source (llamp, dpl-release): its Llama layer against Hugging Face's, the cache
step and its checks, the suffix text layout, the trainable set and the test-time template rule.
A tiny random Llama stands in for Llama-3-8B (conftest.tiny_llm_cache)."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from dpl.llm.cache import CacheError, LlmCache
from dpl.llm.decoder import LlamaDecoderLayer, LlamaLayerShape, RMSNorm
from dpl.methods import build_method
from dpl.optim import build_optimizer
from dplbench.plan.methods import resolve_method
from dplbench.results.root import ResultsRoot
from tests.conftest import LLM_TEST_CLASSES, llm_overrides, tiny, tiny_llm, tiny_llm_cache

transformers = pytest.importorskip("transformers")
CLASSES = LLM_TEST_CLASSES


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(len(CLASSES), 3, 32, 32, generator=g)
    labels = torch.arange(len(CLASSES)).repeat_interleave(2)
    images = protos[labels] + 0.3 * torch.randn(len(labels), 3, 32, 32, generator=g)
    return {"image": images, "clean": images, "label": labels, "key": [str(i) for i in labels]}


def _model(name, **over):
    """The method as the harness resolves it: its release recipe (configs/methods) included."""
    cfg = resolve_method(name, tiny({**llm_overrides(name), **over}), protocol="base2novel")
    model = build_method(cfg)
    model.set_classes(CLASSES, "a photo of a {}.")
    return model


def test_decoder_layer_matches_hugging_face_llama_with_a_padded_cache():
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    C, S0, P = 3, 6, 4
    prefix = torch.randint(0, 40, (C, S0))
    pmask = torch.ones(C, S0, dtype=torch.long)
    pmask[1, :2] = 0  # left padding, as the cache step's batches have
    pmask[2, 3] = 0  # and padding between prompt and phrases
    ids = torch.cat([prefix, torch.randint(0, 40, (C, P))], 1)
    mask = torch.cat([pmask, torch.ones(C, P, dtype=torch.long)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = hf.model(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        past = hf.model(prefix, attention_mask=pmask, position_ids=pos[:, :S0], use_cache=True)
    kv = past.past_key_values.layers[-1]
    shape = LlamaLayerShape(32, 4, 2, 8, 48, 1e-6)
    layer, norm = LlamaDecoderLayer(shape), RMSNorm(32, 1e-6)
    layer.load_state_dict(hf.model.layers[-1].state_dict())
    norm.load_state_dict(hf.model.norm.state_dict())
    layer.inv_freq = hf.model.rotary_emb.inv_freq.clone()
    with torch.no_grad():
        ours = norm(layer(full.hidden_states[-2][:, S0:], kv.keys, kv.values, pmask.bool()))
    torch.testing.assert_close(ours, full.hidden_states[-1][:, S0:], atol=2e-5, rtol=1e-4)


def test_cache_manifest_resume_and_refusals(tmp_path):
    from dplbench.llm.build import build_cache
    from dplbench.llm.tiny import make_tiny_llm

    cache_dir = tiny_llm_cache()
    cache = LlmCache(cache_dir)
    m = cache.manifest
    assert m["layer"]["kv_heads"] == 2 and len(m["datasets"]["synthetic"]["templates"]) == 11
    k = cache.knowledge(tuple(CLASSES), "synthetic")
    assert k.keys.shape[:2] == (11, len(CLASSES)) and k.keys.shape == k.values.shape
    assert k.mask.shape == k.keys.shape[:2] + k.keys.shape[3:4] and k.mask.any(-1).all()
    # rows follow the asked order
    rev = cache.knowledge(tuple(CLASSES[::-1]), "synthetic")
    assert torch.equal(rev.keys, k.keys.flip(1))
    with pytest.raises(CacheError, match="another class list.*no class 'unicorn'"):
        cache.knowledge(("dog", "unicorn"), "synthetic")
    with pytest.raises(CacheError, match="no dataset 'dtd'"):
        cache.knowledge(("dog",), "dtd")
    with pytest.raises(CacheError, match="made from .*the job needs 'meta-llama/Meta-Llama-3"):
        LlmCache(cache_dir, model="meta-llama/Meta-Llama-3-8B-Instruct")
    with pytest.raises(
        CacheError, match=r"made with the drople\+dtype=fp32,max_new_tokens=6 recipe, the job needs"
    ):
        LlmCache(cache_dir, recipe="llamp")
    with pytest.raises(CacheError, match="dplbench llm cache"):
        LlmCache(tmp_path / "none")

    # a second run over the same classes writes nothing; another model may not join the cache
    model = make_tiny_llm(tmp_path / "m", ["dog", "cat"])
    out = tmp_path / "c"
    few = {"dtype": "fp32", "max_new_tokens": 3, "phrases": "none"}
    build_cache(str(model), {"synthetic": ["dog", "cat"]}, out, **few)
    stamp = os.stat(out / "synthetic.safetensors").st_mtime_ns
    build_cache(str(model), {"synthetic": ["dog", "cat"]}, out, **few)
    assert os.stat(out / "synthetic.safetensors").st_mtime_ns == stamp
    other = make_tiny_llm(tmp_path / "m2", ["dog"], seed=1)
    from dplbench.errors import UserError

    with pytest.raises(UserError, match="holds a cache of"):
        build_cache(str(other), {"synthetic": ["dog"]}, out, phrases="none")
    label = r"drople\+dtype=fp32,max_new_tokens=3"
    with pytest.raises(UserError, match=f"made with the {label} recipe, not llamp;"):
        build_cache(str(model), {"synthetic": ["dog"]}, out, recipe="llamp", phrases="none")
    with pytest.raises(UserError, match=f"made with the {label} recipe, not drople;"):
        build_cache(str(model), {"synthetic": ["dog"]}, out, max_new_tokens=128, phrases="none")
    texts = json.loads((out / "synthetic.json").read_text())
    assert len(texts) == 11 and len(texts[0]["descriptions"]) == 2


@pytest.mark.parametrize("name", ["llamp", "dpl-release"])
def test_trainable_set_is_exactly_the_release_one_and_the_llm_stays_frozen(name):
    model = _model(name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    llm = {n for n in trainable if n.startswith("llm.")}
    assert llm == {
        "llm.layer.self_attn.q_proj.weight",
        "llm.layer.self_attn.o_proj.weight",
        "llm.layer.input_layernorm.weight",
        "llm.layer.post_attention_layernorm.weight",
        "llm.norm.weight",
        "llm.tokens",
        "llm.bias",
        *{f"llm.proj.{i}.weight" for i in range(model.llm_depth)},
    }
    rest = {n.split(".")[0] for n in trainable - llm}
    expected = {"text_prompts", "vision_prompts", "vision", "logit_scale_log"}
    if name == "dpl-release":
        expected.add("mag")
    assert rest == expected
    assert all(".lora." in n for n in trainable if n.startswith("vision."))
    assert model.llm.n_tokens == (16 if name == "llamp" else 24)

    frozen = {n: p.detach().clone() for n, p in model.llm.named_parameters() if not p.requires_grad}
    assert {n.split(".")[1] for n in frozen} == {"self_attn", "mlp"}
    clip = {n: p.detach().clone() for n, p in model.clip.named_parameters()}
    opt = build_optimizer(model)
    model.train()
    batch = _batch()
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = sum(model.losses(batch, 0, 2).values())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.llm.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for n, p in model.clip.named_parameters():
        assert torch.equal(p, clip[n]), n
    q = model.llm.layer.self_attn.q_proj.weight
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_evaluation_averages_template_probabilities():
    # N(0, 0.02) deep prompts (not the release's smaller U(±1/√fan_in) ones on this tiny tower)
    # and LLM tokens that matter: templates far enough apart that the rule is tested
    model = _model("llamp", prompts={"init": "normal"}).eval()
    images = _batch()["image"]
    with torch.no_grad():
        for proj in model.llm.proj:
            proj.weight.mul_(300.0)
        averaged = model.logits(images).exp()
        full = model.classes.knowledge
        per_template = []
        for t in range(full.templates):
            # the same model seeing one template only: its evaluation is that template's softmax
            model.classes.knowledge = type(full)(
                full.keys[t : t + 1], full.values[t : t + 1], full.mask[t : t + 1]
            )
            model._eval_text = None
            per_template.append(model.logits(images).exp())
        model.classes.knowledge = full
        model._eval_text = None
        f = torch.nn.functional.normalize(model.image_features(images), dim=-1)
        texts = model.template_text_features()[:, 0]  # [T,C,E]: the one member's
        by_hand = torch.stack([(f @ t.T).softmax(-1) for t in texts]).mean(0)  # temperature 1
    torch.testing.assert_close(averaged, by_hand)
    torch.testing.assert_close(torch.stack(per_template).mean(0), by_hand)
    spread = torch.stack(per_template).std(0).max()
    assert spread > 1e-3, spread  # the templates disagree, so the rule is tested


class _Record:
    """A layer hook that keeps each text layer's output."""

    def __init__(self):
        self.out = []

    def wants_attention(self, modality, layer):
        return False

    def __call__(self, x, attn, modality, layer, layout):
        self.out.append(x.detach().clone())
        self.layout = layout
        return x


def test_suffix_layout_names_never_see_llm_tokens_and_pads_are_masked():
    model = _model("llamp").eval()
    cs = model.classes
    P, l0 = model.llm.n_tokens, cs.embedded.shape[1]
    ctx = model._text_prompt_list()  # [K=1,n,D] per layer
    llm = model.llm(cs.knowledge, [0])
    x, mask, layout = model._sequence(cs, ctx[0], llm[0], True)
    assert x.shape[1] == l0 + P
    # targets: SOT, 4 ctx, the P LLM tokens (DroPLe's token_importance), per class
    assert layout.target.sum(-1).tolist() == [1 + 4 + P] * len(CLASSES)
    assert (layout.global_index == l0 + P - 1).all()

    def run(llm_layers, x):
        rec = _Record()
        pool = torch.full((x.shape[0],), x.shape[1] - 1)
        spans = [(1, [p[0] for p in ctx]), (l0 - 1, llm_layers)]
        with torch.no_grad():
            f = model.text.encode(x, mask, spans, pool, rec, layout)
        return f, rec.out

    f, outs = run(llm, x)
    other = [t + 1.0 for t in llm]
    x2, _, _ = model._sequence(cs, ctx[0], other[0], False)
    f2, outs2 = run(other, x2)
    short = int(cs.eot.argmin())  # a class with padding before the LLM tokens
    names = slice(5, int(cs.eot[short]))
    for a, b in zip(outs, outs2):  # name tokens cannot attend to the LLM tokens
        torch.testing.assert_close(a[:, names], b[:, names])
    assert not torch.allclose(f, f2)
    # whatever sits at a class's masked [EOT]/padding positions changes nothing
    pads = ~layout.valid[short]
    assert pads.any()
    x3 = x.clone()
    x3[short, pads] = torch.randn(int(pads.sum()), x.shape[-1])
    f3, _ = run(llm, x3)
    torch.testing.assert_close(f3[short], f[short])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from dplbench.run.prepare import ensure_synthetic

    root = tmp_path_factory.mktemp("shards")
    ensure_synthetic(str(root))
    return root


def _run(*args):
    from typer.testing import CliRunner

    from dplbench.cli import app

    return CliRunner().invoke(app, ["run", *args], catch_exceptions=False)


def test_smoke_suite_trains_both_llm_methods_and_names_a_missing_cache(tmp_path, shards):
    from dplbench.results import store

    res = tmp_path / "results"
    common = ["--methods", "llamp,dpl-release", "--data", str(shards), "--no-ray"]
    common += [f"llm.model={tiny_llm()}"]  # the tiny LLM stands in for the releases' LLMs
    r = _run(*common, "--results", str(res), "--llm-cache", str(tmp_path / "none"))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no LLM cache for synthetic" in r.stderr
    assert "make it with: dplbench llm cache --model" in r.stderr and "--recipe" in r.stderr
    assert not res.exists()
    # one cache alone: the method whose recipe it is not has none
    r = _run(*common, "--results", str(res), "--llm-cache", tiny_llm_cache("drople"))
    assert r.exit_code == 2 and "llamp recipe" in r.stderr and "--recipe llamp" in r.stderr

    caches = ["--llm-cache", tiny_llm_cache("drople"), "--llm-cache", tiny_llm_cache("llamp")]
    r = _run(*common, "--results", str(res), *caches, "optim.epochs=2")
    assert r.exit_code == 0, r.output
    rows = store.query(
        ResultsRoot(res), "SELECT method, subsample, accuracy FROM results"
    ).to_pylist()
    assert {(x["method"], x["subsample"]) for x in rows} == {
        (m, s) for m in ("llamp", "dpl-release") for s in ("base", "novel")
    }
    assert all(0 <= x["accuracy"] <= 100 for x in rows)


def test_the_kv_pass_truncates_the_phrases_where_the_releases_tools_do():
    from dplbench.llm.build import last_layer_kv
    from dplbench.llm.loaded import load_llm
    from dplbench.llm.recipes import RECIPES

    # DroPLe tools/run_inference_chat.py:169-175, LLaMP :155: max_length=128 for the phrases
    assert {r.max_phrase_tokens for r in RECIPES.values()} == {128}
    llm = load_llm(tiny_llm(), "fp32", "cpu")
    prompt = ["a photo of a dog"]
    n_prompt = int(llm.tokenizer(prompt, return_tensors="pt")["attention_mask"].sum())
    long = [", ".join(["dog"] * 200)]
    _, _, mask = last_layer_kv(llm, prompt, long, batch=1, max_phrase=128)
    assert int(mask.sum()) == n_prompt + 128
    _, _, whole = last_layer_kv(llm, prompt, long, batch=1, max_phrase=1024)
    assert int(whole.sum()) > n_prompt + 128


def test_the_recipe_label_says_what_dtype_and_max_new_tokens_changed():
    from dplbench.llm.build import recipe_label

    # DroPLe's tool: fp16, 128 new tokens; LLaMP's: fp32, 64 (dplbench/llm/recipes.py)
    assert recipe_label("drople", "fp16", 128) == "drople"
    assert recipe_label("drople", "fp32", 128) == "drople+dtype=fp32"
    assert recipe_label("llamp", "fp32", 6) == "llamp+max_new_tokens=6"
    assert recipe_label("llamp", "bf16", 32) == "llamp+dtype=bf16,max_new_tokens=32"
    manifest = json.loads((Path(tiny_llm_cache("llamp")) / "manifest.json").read_text())
    assert manifest["recipe"] == "llamp+max_new_tokens=6"  # built with max_new_tokens=6
    from dpl.llm.manifest import identity

    assert identity(manifest, ["synthetic"])["recipe"] == "llamp+max_new_tokens=6"


def _words_of(text: str, n: int = 4) -> list[str]:
    """The stand-in pipeline's noun chunks by hand: every alphabetic token of >= n letters."""
    return [w for w in re.findall(r"[^\W\d_]+|\d+|[^\w\s]", text) if w.isalpha() and len(w) >= n]


def test_the_phrase_extractor_is_recorded_enters_the_identity_and_is_never_mixed(tmp_path):
    import spacy

    from dpl.llm.manifest import identity
    from dplbench.errors import UserError
    from dplbench.llm.build import build_cache
    from dplbench.llm.phrases import write_standin_pipeline

    cache = Path(tiny_llm_cache())  # built with the stand-in pipeline (tests/conftest.py)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["phrases"] == {"extractor": "spacy_noun_chunks", "spacy": spacy.__version__,
                                   "pipeline": "en_standin_phrases", "version": "0.0.0"}  # fmt: skip
    texts = json.loads((cache / "synthetic.json").read_text())
    for t in texts:  # the chunks are spaCy's noun chunks of each description, joined as phrases
        assert t["chunks"] == [_words_of(d) for d in t["descriptions"]]
        assert t["phrases"] == [", ".join(c) if c else d.strip()
                                for c, d in zip(t["chunks"], t["descriptions"])]  # fmt: skip
    assert any(t["chunks"][i] for t in texts for i in range(len(t["chunks"])))

    model = tiny_llm()
    none = tmp_path / "none"
    build_cache(model, {"synthetic": ["dog", "cat"]}, none, dtype="fp32", max_new_tokens=3,
                phrases="none")  # fmt: skip
    plain = json.loads((none / "manifest.json").read_text())
    assert plain["phrases"] == "none" and plain["datasets"]["synthetic"]["phrases"] == "none"
    spacy_made = tmp_path / "spacy"
    standin = write_standin_pipeline(str(tmp_path / "standin"))
    build_cache(model, {"synthetic": ["dog", "cat"]}, spacy_made, dtype="fp32", max_new_tokens=3,
                phrases=f"spacy:{standin}")  # fmt: skip
    chunked = json.loads((spacy_made / "manifest.json").read_text())
    assert identity(plain, ["synthetic"]) != identity(chunked, ["synthetic"])
    with pytest.raises(UserError, match="phrases come from none, not spacy .* en_standin_phrases"):
        build_cache(model, {"synthetic": ["dog"]}, none, dtype="fp32", max_new_tokens=3,
                    phrases=f"spacy:{standin}")  # fmt: skip


def test_without_spacy_or_its_model_the_cache_step_is_one_line_before_the_llm_loads(
    tmp_path, monkeypatch
):
    from dplbench.errors import UserError
    from dplbench.llm import build

    monkeypatch.setattr(build, "load_llm", lambda *a: pytest.fail("the LLM loaded first"))
    with pytest.raises(
        UserError, match="spaCy has no pipeline 'no_such_pipeline'; python -m spacy"
    ):
        build.build_cache("m", {"synthetic": ["dog"]}, tmp_path / "a",
                          phrases="spacy:no_such_pipeline")  # fmt: skip
    monkeypatch.setitem(sys.modules, "spacy", None)  # not installed
    with pytest.raises(UserError, match=r"spaCy is not installed; pip install 'dplbench\[llm\]'"):
        build.build_cache("m", {"synthetic": ["dog"]}, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_release_job_refuses_a_cache_whose_phrases_are_whole_descriptions_in_one_line(tmp_path):
    """A cache an older dplbench made without spaCy (each dataset's phrases "description", no
    extractor recorded): dpl-release refuses it before anything is written; the same cache made
    with the explicit --phrases none is taken."""
    from typer.testing import CliRunner

    from dplbench.cli import app

    old = tmp_path / "old"
    shutil.copytree(tiny_llm_cache(), old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["phrases"]
    for entry in manifest["datasets"].values():
        entry["phrases"] = "description"
    (old / "manifest.json").write_text(json.dumps(manifest))
    res = tmp_path / "results"
    args = ["run", "--suite", "smoke", "--methods", "dpl-release", "--no-ray", "--results",
            str(res), "--data", str(tmp_path / "shards"), f"llm.model={tiny_llm()}"]  # fmt: skip
    out = CliRunner().invoke(app, [*args, "--llm-cache", str(old)])
    assert out.exit_code == 2, out.output
    assert len(out.stderr.strip().splitlines()) == 1
    assert "phrases are whole descriptions, not the releases' noun phrases" in out.stderr
    assert (
        "python -m spacy download en_core_web_sm" in out.stderr and "--phrases none" in out.stderr
    )
    assert not res.exists()
    manifest["phrases"] = "none"  # as `llm cache --phrases none` writes it
    for entry in manifest["datasets"].values():
        entry["phrases"] = "none"
    (old / "manifest.json").write_text(json.dumps(manifest))
    plan = CliRunner().invoke(
        app, [*args, "--llm-cache", str(old), "--dry-run", "--format", "json"]
    )
    assert plan.exit_code == 0, plan.output
    (job,) = [json.loads(line) for line in plan.stdout.splitlines()]
    assert job["llm"]["phrases"] == "none"
