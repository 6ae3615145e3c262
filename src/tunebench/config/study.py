"""Reading a study file and expanding it into cells.

    study.yaml ──load──> StudyConfig ──expand──> [Cell(id, config, experiments)]

Sweeps are explicit: an experiment's `sweep:` axes form a product, each `zip:` group varies its axes
together, and the cells of a study are the union over experiments, de-duplicated by cell id. `--set k=v`
applies to every cell after expansion, so the command line always wins.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunebench.config.schema import CellConfig, Experiment, Section, StudyConfig
from tunebench.config.tasks import check_cell
from tunebench.errors import UserError, closest, did_you_mean

# Study-level fields: one value per study, so a sweep over them is meaningless.
NOT_SWEEPABLE = {"name", "description", "defaults", "experiments", "executor", "storage", "search"}
# Sections that never change what a cell computes; left out of the cell id.
NOT_IN_CELL_ID = ("serve", "loadtest", "cost", "resources")


@dataclass
class Cell:
    id: str
    config: CellConfig
    experiments: list[str] = field(default_factory=list)

    def axes(self) -> dict[str, Any]:
        """The common axes, flat, for tables and the results store."""
        c = self.config
        trained = c.method not in ("zero_shot", "few_shot")
        return {
            # a hosted model is its own row of the report, beside the local model whose tokenizer it borrows
            "model": f"{c.model.endpoint_model or c.model.name} (hosted)" if c.model.endpoint else c.model.name,
            "task": c.data.task,
            "method": c.method,
            "fraction": c.data.train_fraction if trained else None,
            "count": c.data.train_count if trained else None,
            "lora_r": c.lora.r if c.method in ("lora", "qlora") else None,
            "lora_alpha": c.lora.alpha if c.method in ("lora", "qlora") else None,
            "lora_dropout": c.lora.dropout if c.method in ("lora", "qlora") else None,
            "epochs": c.training.epochs if trained else None,
            "seed": c.data.seed,
        }


@dataclass
class Study:
    config: StudyConfig
    cells: list[Cell]
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.config.name


# ---------------------------------------------------------------- reading


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"study file not found: {path}", "check the path; shipped studies are in studies/")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a study file", "give the path of a .yaml file")
    try:
        raw = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}", "fix the YAML syntax there") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a study file must be a mapping with 'name' and 'experiments'",
                        "see studies/demo.yaml for the layout")
    return raw


def read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise UserError(f"{path}: not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} "
                        f"(line {line}, byte {column} of the line) cannot be decoded",
                        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set lora.r=4` → {'lora.r': 4}; values are read as YAML scalars (4, 0.1, true, [1,2])."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set '{item}' is not of the form dotted.key=value", "e.g. --set lora.r=4")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_study(path: str | Path, sets: list[str] | None = None, source: str | None = None) -> Study:
    path = Path(path)
    raw = read_yaml(path)
    where = source or str(path)
    overrides = parse_set(sets or [])
    for key in [k for k in overrides if k in ("name", "description")]:
        raw[key] = overrides.pop(key)
    for key in overrides:
        check_path(key, where="--set")
    study = validated(StudyConfig, raw, where)
    cells = expand(study, overrides, where)
    local_paths_beside(cells, path.parent)
    if study.search is not None:
        from tunebench.config.search import check_search

        if len(cells) != 1:
            raise UserError(f"{where}: a study with a search: section samples its cells, and its experiments "
                            f"expand to {len(cells)}", "drop the experiments' sweep/zip (the defaults are the base "
                            "of every trial), or drop search: to run the grid")
        for key in study.search.parameters:
            check_field(key, f"{where}: search.parameters")
        check_search(study.search, where, cells[0].config.data.task)
    return Study(config=study, cells=cells, path=path)


def local_paths_beside(cells: list[Cell], base: Path) -> None:
    """A relative data.source names a file beside the study file, not in the working directory. Resolved
    after the cell ids are computed, so an id does not depend on where the study directory lies."""
    from tunebench.data.sources import resolve_local

    for cell in cells:
        source = resolve_local(cell.config.data.source, base)
        if source != cell.config.data.source:
            cell.config = cell.config.model_copy(
                update={"data": cell.config.data.model_copy(update={"source": source})})


# ---------------------------------------------------------------- expansion


def expand(study: StudyConfig, overrides: dict[str, Any], where: str) -> list[Cell]:
    defaults = nested(study.defaults)
    validated(CellConfig, defaults, f"{where}: defaults")
    cells: dict[str, Cell] = {}
    for i, exp in enumerate(study.experiments):
        label = exp.name or f"experiments[{i}]"
        at = f"{where}: experiments[{i}]" + (f" ({exp.name})" if exp.name else "")
        base = merge(defaults, nested(exp.overrides()))
        validated(CellConfig, base, at)
        for combo in combinations(exp, at):
            values = {**combo, **overrides}
            cfg = validated_with_sets(with_values(base, values), at, overrides).normalized()
            checked_with_sets(cfg, at, overrides)
            cid = cell_id(cfg)
            cells.setdefault(cid, Cell(cid, cfg)).experiments.append(label)
    if not cells:
        raise UserError(f"{where}: the study expands to no cells", "add at least one experiment")
    return list(cells.values())


def combinations(exp: Experiment, at: str) -> list[dict[str, Any]]:
    axes: list[list[dict[str, Any]]] = []
    for key, values in exp.sweep.items():
        check_axis(key, values, f"{at}.sweep")
        axes.append([{key: v} for v in values])
    for g, group in enumerate(exp.zip_groups()):
        for key, values in group.items():
            check_axis(key, values, f"{at}.zip")
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise UserError(f"{at}.zip[{g}]: axes have different lengths ({sizes})",
                            "zip varies axes together, so give each the same number of values")
        keys = list(group)
        axes.append([dict(zip(keys, row, strict=True)) for row in zip(*group.values(), strict=True)])
    return [merge_all(parts) for parts in itertools.product(*axes)]


def check_axis(key: str, values: Any, at: str) -> None:
    check_field(key, at, "sweep")
    if not isinstance(values, list) or not values:
        raise UserError(f"{at}: axis '{key}' needs a non-empty list of values, got {values!r}",
                        f"e.g. {key}: [value1, value2]")


def check_field(key: str, at: str, verb: str = "search") -> None:
    """A key that may vary across cells (a sweep axis or a search parameter): a field of a cell, not a section."""
    if key.split(".")[0] in NOT_SWEEPABLE:
        raise UserError(f"{at}: '{key}' is a study-level field and cannot vary",
                        f"{verb} cell fields such as lora.r, data.train_fraction or method")
    annotation = check_path(key, where=at)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        raise UserError(f"{at}: '{key}' is a section, not a field, and cannot vary as a whole",
                        f"{verb} its fields instead, e.g. {key}.{next(iter(annotation.model_fields))}")


def check_path(dotted: str, where: str) -> Any:
    """Follow a dotted key through CellConfig; name the closest valid key when it does not exist."""
    model: type[BaseModel] = CellConfig
    parts = dotted.split(".")
    annotation: Any = None
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:depth])
            valid = [f"{prefix}.{f}" if prefix else f for f in fields]
            guess = closest(part, list(fields))
            hint = f"did you mean '{prefix + '.' if prefix else ''}{guess}'?" if guess else ""
            raise UserError(f"{where}: unknown field '{dotted}'",
                            f"{hint} valid here: {', '.join(valid)}".strip())
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, Section)
        if depth < len(parts) - 1:
            if not is_section:
                raise UserError(f"{where}: '{'.'.join(parts[:depth + 1])}' is a value, it has no field "
                                f"'{parts[depth + 1]}'", f"use '{'.'.join(parts[:depth + 1])}' itself")
            model = annotation
    return annotation


# ---------------------------------------------------------------- validation with readable errors


def validated(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(*describe(err, model, where)) from None


def validated_with_sets(data: dict[str, Any], at: str, overrides: dict[str, Any]) -> Any:
    """A cell's config; a bad value that came from --set is blamed on the --set flag, not on the experiment."""
    try:
        return CellConfig.model_validate(data)
    except ValidationError as err:
        loc = ".".join(str(p) for p in err.errors()[0]["loc"])
        culprit = next((k for k in overrides if loc == k or loc.startswith(f"{k}.")), None)
        if not loc and len(overrides) == 1:   # a check across fields (a model validator): the one --set given
            culprit = next(iter(overrides))
        if culprit is not None:
            where = f"--set {culprit}={set_text(overrides[culprit])}"
        elif overrides:
            where = f"{at} (with --set {', '.join(overrides)})"
        else:
            where = at
        problem, fix = describe(err, CellConfig, where)
        if culprit is not None and fix.startswith("fix the value"):
            fix = f"give --set {culprit} a valid value"
        raise UserError(problem, fix) from None


def checked_with_sets(cfg: CellConfig, at: str, overrides: dict[str, Any]) -> None:
    """The task checks (config.tasks), a field set with --set blamed on the flag."""
    try:
        check_cell(cfg, at)
    except UserError as err:
        culprit = next((k for k in overrides if f"{k} " in err.problem or f"{k}:" in err.problem), None)
        if culprit is None or not err.problem.startswith(at):
            raise
        where = f"--set {culprit}={set_text(overrides[culprit])}"
        raise UserError(where + err.problem[len(at):], f"{err.fix} (give --set {culprit} a valid value)") from None


def set_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def describe(err: ValidationError, model: type[BaseModel], where: str) -> tuple[str, str]:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    path = ".".join(loc)
    kind = first["type"]
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    if kind == "extra_forbidden":
        valid = list(section_at(model, loc[:-1]).model_fields)
        return f"{where}: unknown key '{path}'{more}", did_you_mean(loc[-1], valid)
    value = first.get("input")
    ctx = first.get("ctx") or {}
    if kind in ("literal_error", "enum"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        guess = closest(value, allowed) if isinstance(value, str) else None
        return (f"{where}: {path} = {value!r} is not allowed{more}",
                (f"did you mean '{guess}'? " if guess else "") + f"allowed values: {ctx.get('expected')}")
    if kind == "missing":
        return f"{where}: required field '{path}' is missing{more}", f"add '{path}: ...' to the file"
    if not loc:   # a check across fields: its message names them
        return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}", "fix the values it names"
    return f"{where}: {path} = {value!r}: {first['msg']}{more}", f"fix the value of '{path}'"


def section_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel]:
    for part in loc:
        field_info = model.model_fields.get(part)
        ann = field_info.annotation if field_info else None
        # an optional section (search: SearchConfig | None) is still that section
        ann = next((a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return model


# ---------------------------------------------------------------- dict helpers


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Expand dotted keys ('lora.r': 4) into nested dicts, merging with nested ones."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        value = nested(value) if isinstance(value, dict) and key not in ("columns", "options") else value
        out = merge(out, with_values({}, {key: value}))
    return out


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for dotted, value in values.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("columns", "options"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_all(parts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    return out


# ---------------------------------------------------------------- cell ids


def cell_id(cfg: CellConfig) -> str:
    """A short stable hash of what the cell computes, behind a readable prefix."""
    payload = cfg.model_dump(mode="json", exclude=set(NOT_IN_CELL_ID))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
    model = re.sub(r"[^a-z0-9]+", "-", Path(cfg.model.name).name.lower()).strip("-")[:24]
    task = {"classification": "cls", "summarization": "sum", "generation": "gen"}[cfg.data.task]
    return f"{model}-{task}-{cfg.method.replace('_', '')}-{digest}"


def single_cell(study: Study, command: str) -> Cell:
    """Commands that run one cell refuse a file that expands to several."""
    if len(study.cells) != 1:
        raise UserError(
            f"{study.path}: expands to {len(study.cells)} cells; 'tunebench {command}' runs exactly one",
            f"run the whole study with 'tunebench run {study.path}', or pin the axes with --set",
        )
    return study.cells[0]
