"""`dplbench ablate NAME`: the paper's ablations, declared in configs/ablations/NAME.yaml.

    description: IWTD importance scores (METHOD.md §3)
    suite: base2novel            # the jobs of each variant: this suite's datasets, seeds, shots
    method: dpl                  # default method of the variants
    overrides: {}                # applied to every variant (optional)
    variants:                    # name -> dotted config keys (and optionally `method:`)
      cls: {iwtd.importance: [cls]}
      uniform: {iwtd.importance: [uniform]}

Each variant expands into the suite's jobs with its overrides; precedence: suite < ablation
`overrides` < command line < variant (the variant is what is being ablated, so it wins). Every job
carries params {"ablation": NAME, "variant": V}, which the result rows keep in their `params` column;
the jobs run through the runner like `dplbench run`, and the table comes from those rows through
`aggregate.ablation_tables` (one row per variant, per method when variants switch methods).

Only ablation/variant go into params (not the overrides): the generic report groups sweep rows by
their params keys, and the overrides are in each row's `config` column anyway.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dplbench import results
from dplbench.config import CONFIG_DIR, ConfigError, deep_merge, load_yaml
from dplbench.suites import Job, Suite, load_suite

log = logging.getLogger(__name__)
ABLATION_DIR = CONFIG_DIR / "ablations"


@dataclass(frozen=True)
class Variant:
    name: str
    method: str | None  # None: the ablation's method
    overrides: dict[str, Any]  # nested MethodConfig overrides


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    suite: str
    method: str
    overrides: dict[str, Any]
    variants: tuple[Variant, ...]


def list_ablations() -> list[str]:
    return sorted(p.stem for p in ABLATION_DIR.glob("*.yaml"))


def _nested(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """{"iwtd.importance": [cls]} or nested mappings -> nested overrides."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"{where}: bad key {key!r}")
        *parents, leaf = key.split(".")
        node: dict[str, Any] = {}
        top = node
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        out = deep_merge(out, top)
    return out


def load_ablation(name: str) -> Ablation:
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = ABLATION_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown ablation {name!r}; choose one of: {', '.join(list_ablations())}"
        )
    spec = load_yaml(path)
    allowed = {"description", "suite", "method", "overrides", "variants"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {sorted(unknown)[0]}; valid: {', '.join(sorted(allowed))}"
        )
    raw = spec.get("variants")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: needs a non-empty `variants:` mapping")
    variants = []
    for vname, body in raw.items():
        if isinstance(vname, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            raise ConfigError(f"{path}: quote the variant name {str(vname).lower()!r}")
        body = dict(body or {})
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: variant {vname}: expected a mapping")
        method = body.pop("method", None)
        variants.append(Variant(str(vname), method, _nested(body, f"{path}: variant {vname}")))
    return Ablation(
        name=path.stem,
        description=str(spec.get("description", "")),
        suite=str(spec.get("suite", "base2novel")),
        method=str(spec.get("method", "dpl")),
        overrides=_nested(spec.get("overrides") or {}, f"{path}: overrides"),
        variants=tuple(variants),
    )


def ablation_suite(ab: Ablation, selections: dict[str, Any], suite: str | None = None) -> Suite:
    """Every variant's jobs (params = ablation + variant) as one suite the runner executes.
    selections: datasets, seeds, workers, overrides (command line); methods come from variants."""
    jobs: dict[str, Job] = {}
    data: dict[str, Any] = {}
    name = suite or ab.suite
    base = deep_merge(ab.overrides, selections.get("overrides") or {})
    for v in ab.variants:
        sel = {
            **selections,
            "methods": [v.method or ab.method],
            "overrides": deep_merge(base, v.overrides),
        }
        s = load_suite(name, sel)
        data = s.data
        for j in s.jobs:
            if j.id in jobs:  # same work twice would be one job with two labels
                other = jobs[j.id].params["variant"]
                raise ConfigError(
                    f"ablation {ab.name}: variants {other} and {v.name} resolve to the same job"
                )
            jobs[j.id] = replace(j, params={"ablation": ab.name, "variant": v.name})
    return Suite(Path(name).stem, tuple(jobs.values()), data)


def _rows(results_root: str, ablation: str, suite: str | None = None) -> list[dict[str, Any]]:
    """The ablation's rows: newest run per (job, variant, evaluated split), `ablation` and
    `variant` lifted from params into columns (what aggregate.ablation_tables groups by). All runs
    are read, not the `results` view: a plain `dplbench run` of the same work (same job id) must not
    hide a variant's row."""
    if not results.has_rows(results_root):
        return []
    where = "json_extract_string(params, '$.ablation') = '{}'".format(ablation.replace("'", "''"))
    if suite:
        where += " AND suite = '{}'".format(suite.replace("'", "''"))
    rows = results.query(
        results_root, f"SELECT * FROM rows WHERE {where} ORDER BY created_at"
    ).to_pylist()
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        p = json.loads(r["params"] or "{}")
        r = {**r, "ablation": p.get("ablation"), "variant": p.get("variant")}
        latest[(r["job_id"], r["variant"], r["dataset"], r["subsample"], r["split"])] = r
    return list(latest.values())


def done_job_ids(results_root: str, ab: Ablation, suite: str) -> set[str]:
    """Jobs of this ablation whose rows exist with its labels (--resume)."""
    return {(r["job_id"]) for r in _rows(results_root, ab.name, suite)}


def run_ablation(ab: Ablation, suite: Suite, settings: Any, opts: Any, on_event: Any = None) -> Any:
    """Run the suite's jobs through the runner (opts.resume: skip jobs with this ablation's rows)."""
    from dplbench.runner import RunSummary, run_suite

    skipped: list[Job] = []
    if opts.resume:
        done = done_job_ids(settings.results, ab, suite.name)
        skipped = [j for j in suite.jobs if j.id in done]
        suite = replace(suite, jobs=tuple(j for j in suite.jobs if j.id not in done))
    if not suite.jobs:
        return RunSummary(suite.name, settings.run_id, [], skipped)
    # The runner's own --resume looks at any rows of a job id, labelled or not: ours is above.
    summary = run_suite(suite, settings, replace(opts, resume=False), on_event)
    summary.skipped = skipped
    return summary


def ablation_table(ab: Ablation, results_root: str, suite: str | None = None) -> list[dict]:
    """[(protocol, pivot rows in the YAML's variant order)] as one list of rows with `protocol`."""
    from dplbench.aggregate import ablation_tables

    order = {v.name: i for i, v in enumerate(ab.variants)}
    out = []
    for (_, protocol), table in ablation_tables(_rows(results_root, ab.name, suite)).items():
        table = sorted(table, key=lambda r: (order.get(r.get("variant"), len(order)),))
        out += [{"protocol": protocol, **r} for r in table]
    return out


def ablation_markdown(ab: Ablation, table: list[dict], suite: str | None = None) -> str:
    """One Markdown table per protocol: variant (method), Base/Novel/HM or Accuracy, seeds."""
    from dplbench.report import fmt, md_table

    title = f"## Ablation `{ab.name}`" + (f" (suite {suite})" if suite else "")
    parts = [title, ab.description] if ab.description else [title]
    if not table:
        return "\n\n".join([*parts, "No rows yet for this ablation."]) + "\n"
    for protocol in dict.fromkeys(r["protocol"] for r in table):
        rows = [r for r in table if r["protocol"] == protocol]
        keys = ["method", "variant"] if "method" in rows[0] else ["variant"]
        if "hm" in rows[0]:
            head, cols = ["Base", "Novel", "HM"], ["base", "novel", "hm"]
        else:
            head, cols = ["Accuracy"], ["accuracy"]
        body = [
            [str(r.get(k)) for k in keys]
            + [fmt(r.get(c), r.get(f"{c}_std")) for c in cols]
            + [str(r.get("datasets", ""))]
            for r in rows
        ]
        parts += [f"### {protocol}", md_table([*keys, *head, "Datasets"], body)]
    return "\n\n".join(parts) + "\n"


def write_markdown(text: str, results_root: str, name: str) -> Path:
    """R/reports/ablations/NAME.md, written under a temporary name and renamed into place."""
    path = Path(results_root) / "reports" / "ablations" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
