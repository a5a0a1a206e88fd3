import pytest

from mpiland.errors import GridError, JobFileError
from mpiland.jobfile import parse_job

BASE = """
[model]
factory = "mpiland.demo:digits_mlp"
[grid]
x = [-1, 1, 3]
"""


def test_defaults_filled_in():
    job = parse_job(BASE)
    assert job.directions.norm == "filter" and job.directions.ignore == "biasbn"
    assert job.data.splits == ("test",) and job.data.dataset == "digits"
    assert job.grid.dims == 1 and job.grid.shape == (3,)
    assert job.run.device == "auto" and job.output.overwrite is False


@pytest.mark.parametrize("extra, key, fragment", [
    ('[directions]\nnorm = "filtr"', "directions.norm", 'expected one of auto|filter|layer|weight|model|none, got "filtr"'),
    ('[directions]\nseed = 1.5', "directions.seed", "expected an integer"),
    ('[directions]\ninclude = ["("]', "directions.include", "invalid regular expression"),
    ('[data]\nsplits = ["val"]', "data.splits", "expected one of train|test"),
    ('[data]\nsubsett = 3', "data.subsett", "unknown key"),
    ('[data]\nbatch_size = 0', "data.batch_size", ">= 1"),
    ('[run]\ndevice = "gpu"', "run.device", "auto|cpu|cuda|cuda:N"),
    ('[loss]\nname = "hinge"', "loss.name", "cross_entropy|mse|nll"),
    ('[outputs]\npath = "x"', "outputs", "unknown section"),
    ('[output]\noverwrite = "yes"', "output.overwrite", "true or false"),
])
def test_errors_name_the_key(extra, key, fragment):
    with pytest.raises(JobFileError) as info:
        parse_job(BASE + extra)
    assert str(info.value).startswith(key + ":")
    assert fragment in str(info.value)


@pytest.mark.parametrize("grid, fragment", [
    ("x = [1, -1, 3]", "greater than max"),
    ("x = [-1, 1, 0]", "at least 1"),
    ("x = [-1, 1]", "[min, max, num]"),
    ("x = [-1, 1, 2.5]", "num must be an integer"),
    ("x = [0, 0, 4]", "min equals max"),
])
def test_impossible_grids(grid, fragment):
    with pytest.raises(GridError, match="grid.x") as info:
        parse_job('[model]\nfactory = "a:b"\n[grid]\n' + grid)
    assert fragment in str(info.value)


def test_single_point_axis_is_allowed():
    job = parse_job('[model]\nfactory = "a:b"\n[grid]\nx = [0.5, 0.5, 1]\ny = [-1, 1, 3]')
    assert job.grid.x.values() == [0.5] and job.grid.shape == (1, 3)


def test_missing_sections_and_factory():
    with pytest.raises(JobFileError, match="model: missing required section"):
        parse_job("[grid]\nx = [-1, 1, 3]")
    with pytest.raises(JobFileError, match="model.factory: missing required key"):
        parse_job("[model]\n[grid]\nx = [-1, 1, 3]")
    with pytest.raises(JobFileError, match="model.factory: expected"):
        parse_job('[model]\nfactory = "nocolon"\n[grid]\nx = [-1, 1, 3]')


def test_overrides_are_toml_values():
    job = parse_job(BASE, ["grid.y=[-2, 2, 5]", "directions.norm=layer", "data.subset=7", "output.path=o.h5"])
    assert job.grid.shape == (3, 5) and job.grid.y.min == -2.0
    assert job.directions.norm == "layer" and job.data.subset == 7 and job.output.path == "o.h5"
    with pytest.raises(JobFileError, match="--set"):
        parse_job(BASE, ["novalue"])


def test_orthogonalize_needs_2d_and_bad_toml():
    with pytest.raises(JobFileError, match="directions.orthogonalize"):
        parse_job(BASE + "[directions]\northogonalize = true")
    with pytest.raises(JobFileError, match="not valid TOML"):
        parse_job("[model\n")


def test_axis_values_hit_the_end_points():
    job = parse_job('[model]\nfactory = "a:b"\n[grid]\nx = [-1, 1, 21]')
    v = job.grid.x.values()
    assert v[0] == -1.0 and v[-1] == 1.0 and v[10] == pytest.approx(0.0) and len(v) == 21


def test_python_specs_and_job_files_share_one_set_of_defaults():
    """Every key a job file leaves out gets the spec dataclass's default, resolved the same way for each kind."""
    from dataclasses import fields

    from mpiland.jobfile import _SCHEMA, _SPECS
    from mpiland.spec import DirectionsSpec, ModelSpec, resolve_directions

    job = parse_job('[model]\nfactory = "mpiland.demo:digits_mlp"\n[grid]\nx = [-1.0, 1.0, 3]\n')
    for section, cls in _SPECS.items():
        assert set(_SCHEMA[section]) == {f.name for f in fields(cls)}, section
        if section in ("train", "connect", "grid", "directions"):  # train and connect: None unless given
            continue
        if section == "hessian":  # hessian.splits () means: the evaluated splits
            assert job.hessian.splits == job.data.splits
            continue
        defaults = cls(factory="mpiland.demo:digits_mlp") if cls is ModelSpec else cls()
        assert getattr(job, section) == defaults, section
    kinds = {"random": "", "file": 'file = ["d.h5"]', "hessian": "", "interpolation": 'models = ["a.pt", "b.pt"]'}
    for kind, extra in kinds.items():
        text = (f'[model]\nfactory = "mpiland.demo:digits_mlp"\n[directions]\nkind = "{kind}"\n{extra}\n'
                '[grid]\nx = [-1.0, 1.0, 3]\n')
        from_toml = parse_job(text).directions
        from_python = resolve_directions(DirectionsSpec(kind=kind, file=from_toml.file, models=from_toml.models))
        assert from_toml == from_python, kind
        assert from_python.relevant() == DirectionsSpec(kind=kind, file=from_toml.file,
                                                        models=from_toml.models).relevant(), kind
