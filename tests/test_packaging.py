"""The package installs whole: build the wheel, install it into a fresh virtual environment outside the
checkout, and from another folder run the console script, one study's tiny config and the app's main page.

The fresh environment gets ft-workbench only from the wheel (``pip install --no-deps``); its dependencies
(torch, transformers, streamlit, ...) are borrowed from the project's environment through a ``.pth`` line,
so the test runs offline and does not download several GB again. A ``.pth`` line only adds a directory to
``sys.path``: the project's editable-install hook in that directory is not run, so every ``workbench`` /
``probes`` / ``studies`` / ``app`` module comes from the wheel (checked below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", ".workbench_home")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """``{"python", "workbench", "elsewhere", "wheel"}`` of a fresh venv holding only our wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)  # a clean copy: no stale build/ from earlier builds goes in
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, cwd=tmp, capture_output=True, text=True)
    [wheel] = (tmp / "dist").glob("ft_workbench-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"python": python, "workbench": env_dir / "bin" / "workbench", "elsewhere": elsewhere, "wheel": wheel, "site": site}


def _run(installed, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(list(cmd), cwd=installed["elsewhere"], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_holds_every_package_and_the_files_read_at_run_time(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for module in ("workbench/__init__.py", "probes/__init__.py", "studies/__init__.py", "app/__init__.py", "app/main.py",
                   "app/cli.py", "app/views/analysis.py", "studies/quickstart/__main__.py", "workbench/models/load.py"):
        assert module in names
    tracked = {str(p.relative_to(ROOT)) for p in (ROOT / "studies").glob("*/configs/*.json")}
    assert tracked and tracked <= names  # every shipped study config
    assert not any(n.startswith(("tests/", "kernels/")) for n in names)  # tests stay out; never shadow HF `kernels`
    ours = {f"workbench_kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert ours and ours <= names  # the checkout's kernels/ ships under its own import name


def test_every_package_folder_is_listed_in_pyproject():
    """``pyproject.toml`` lists the packages (the kernels mapping rules out discovery): a new folder must be added."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for top in ("workbench", "probes", "studies", "app")
               for p in (ROOT / top).rglob("__init__.py")}
    assert set(tool["packages"]) == folders | {"workbench_kernels"}
    assert tool["package-dir"] == {"workbench_kernels": "kernels"}


def test_modules_come_from_the_wheel_not_the_checkout(installed):
    out = _run(installed, str(installed["python"]), "-c",
               "import app, probes, studies, workbench, json; print(json.dumps([m.__file__ for m in (app, probes, studies, workbench)]))")
    for path in json.loads(out.stdout):
        assert Path(path).is_relative_to(installed["site"]), path


def test_the_installed_copy_runs_the_fast_paths_from_its_own_kernels(installed):
    """Prefix-shared patching (layers and positions) and the streaming logit lens run in the installed copy, from the
    wheel's ``workbench_kernels``, beside Hugging Face's ``kernels`` package (when installed)."""
    script = textwrap.dedent("""
        import importlib.util, json, torch
        import workbench_kernels.logit_lens, workbench_kernels.forward_from_layer
        from transformers import LlamaConfig, LlamaForCausalLM
        from probes.logit_lens import chunked_logit_lens
        from probes.metrics import logit_diff
        from probes.patching import activation_patch
        from probes.patch_sites import head_sites
        from workbench.architecture import Dims
        from workbench_kernels.paths import path_taken

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg).eval()
        clean, corrupt = torch.randint(0, 64, (2, 6)), torch.randint(0, 64, (2, 6))
        activation_patch(model, head_sites(Dims.of(model), pos=-1), clean, corrupt, logit_diff(torch.tensor([1, 2]), torch.tensor([[3], [4]])))
        chunked_logit_lens(model, torch.randn(2, 5, 32), k=3)
        hf = importlib.util.find_spec("kernels")
        print(json.dumps({"prefix": path_taken("shared_prefix"), "lens": path_taken("logit_lens"),
                          "ours": [workbench_kernels.logit_lens.__file__, workbench_kernels.forward_from_layer.__file__],
                          "hf": None if hf is None else hf.origin}))
    """)
    out = json.loads(_run(installed, str(installed["python"]), "-c", script).stdout.strip().splitlines()[-1])
    assert out["prefix"] == "layers and positions" and out["lens"] == "streaming"
    assert all(Path(f).is_relative_to(installed["site"] / "workbench_kernels") for f in out["ours"])
    assert out["hf"] is None or "workbench_kernels" not in out["hf"]


def test_console_script_from_another_folder(installed):
    assert "quickstart" in _run(installed, str(installed["workbench"]), "--help").stdout
    assert set(_run(installed, str(installed["workbench"]), "methods").stdout.split()) >= {"lofit", "neft", "caft", "lora", "full"}


def test_app_main_page_from_the_installed_package(installed, tmp_path):
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        import app
        from app.latency.tiny import make_tiny_pair
        from streamlit.testing.v1 import AppTest

        base, run, runs = make_tiny_pair(Path({str(tmp_path)!r}))
        os.environ.update(WORKBENCH_APP_BASE=str(base), WORKBENCH_APP_TUNED=str(run), WORKBENCH_APP_RUNS=str(runs))
        at = AppTest.from_file(str(Path(app.__file__).parent / "main.py"), default_timeout=120).run()
        assert not at.exception and not at.error, (at.exception, at.error)
        at.radio[0].set_value("Run results").run()  # the run's figures (the first view is empty before a prompt)
        assert not at.exception and not at.error, (at.exception, at.error)
        print("charts", len(at.get("plotly_chart")))
    """)
    out = _run(installed, str(installed["python"]), "-c", script)
    assert int(out.stdout.split("charts")[-1]) > 0


@pytest.mark.real
def test_a_study_tiny_config_from_the_installed_package(installed):
    """``python -m studies.quickstart --config tiny`` reads its config from the installed package and trains
    LoFiT on the real SmolLM2 (a few steps)."""
    runs = installed["elsewhere"] / "runs"
    out = _run(installed, str(installed["python"]), "-m", "studies.quickstart", "--config", "tiny", "--out", str(runs / "tiny"))
    record = json.loads((runs / "tiny" / "results.json").read_text())
    assert record["run_info"]["config"]["n_train"] == 16 and "base vs tuned" in out.stdout
    assert (runs / "tiny" / "report.html").is_file()


def test_kernels_folder_does_not_shadow_hf_kernels():
    """Our ``kernels/`` folder imports as ``workbench_kernels``; ``kernels`` stays Hugging Face's package."""
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    import workbench_kernels.logit_lens

    ours = Path(workbench_kernels.logit_lens.__file__).resolve().parent
    assert ours.name == "kernels" and not (ours / "__init__.py").exists()  # a namespace folder: loses to HF's package
    hf = importlib.util.find_spec("kernels")
    if hf is not None:  # transformers >= 5.25 requires it; when present it must be the distribution's own files
        assert Path(hf.origin).resolve().parent != ours
        assert importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py").resolve() == Path(hf.origin).resolve()
