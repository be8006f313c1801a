"""The packaging files agree with each other and with the CLI."""

import tomllib

import yaml
from conftest import REPO

from pipeline.cli.commands import cli


def test_conda_yaml_repeats_pyproject_pins():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    (pip_section,) = [d for d in conda["dependencies"] if isinstance(d, dict)]
    assert sorted(pip_section["pip"]) == sorted(pyproject["project"]["dependencies"])
    assert all("==" in pin for pin in pip_section["pip"])


def test_mlproject_parameters_map_one_to_one_onto_cli_options():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml"
    commands = {"sweep": cli.commands["sweep"], "main": cli.commands["exercise"],
                "report": cli.commands["report"]}
    for name, entry in project["entry_points"].items():
        command = commands[name]
        options = {o.lstrip("-").replace("-", "_") for p in command.params for o in p.opts}
        for parameter in entry["parameters"]:
            assert parameter in options, (name, parameter)
            flag = "--" + parameter.replace("_", "-")
            if parameter != "spec":
                assert f"{flag} {{{parameter}}}" in entry["command"], (name, parameter)


def test_every_subpackage_is_in_the_distribution():
    import setuptools

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(setuptools.find_packages(str(REPO), include=include))
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "pipeline").rglob("__init__.py")}
    assert packaged == on_disk and {"pipeline.search", "pipeline.tracking"} <= packaged
