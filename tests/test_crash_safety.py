"""Issue 9, items 2 and 3 under real processes: SIGKILL in the middle of a write, and a load racing a save.

A killed writer cannot clean up after itself: its temporary file (``schash-tmp-<pid>-...``)
stays until the next write of the same target removes it (see :mod:`schash._atomic`).
"""

import copy
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import schash

PYTHON_DIR = str(Path(schash.__file__).resolve().parents[1])


def _start(script: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"  # imports done: what follows is only writing
    return proc


def _reversed_types(model):
    """The same model with its cell types in the opposite order (same calls, other tensors)."""
    other = copy.deepcopy(model)
    n = len(model.cell_types)
    other.cell_types = list(model.cell_types)[::-1]
    other.anchors = np.ascontiguousarray(model.anchors[::-1])
    other.ref_labels = (n - 1) - model.ref_labels
    return other


@pytest.fixture(scope="module")
def two_models(synth_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    a, b = d / "a.schash", d / "b.schash"
    synth_model.save(a)
    _reversed_types(synth_model).save(b)
    return a, b


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


SAVE_LOOP = """
    import sys
    import schash
    models = [schash.load(sys.argv[1]), schash.load(sys.argv[2])]
    target = sys.argv[3]
    print("ready", flush=True)
    i = 0
    while True:
        models[i % 2].save(target, overwrite=True)
        i += 1
"""


def test_sigkill_during_model_save_leaves_a_whole_model(two_models, tmp_path, synth):
    a, b = two_models
    target = tmp_path / "m.schash"
    schash.load(a).save(target)
    allowed = {_digest(a), _digest(b)}
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = _start(SAVE_LOOP, a, b, target)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _digest(target) in allowed  # the old model or the new one, never a part of either
        schash.load(target).predict(synth[:20])
    schash.load(a).save(target, overwrite=True)  # the next save removes what killed ones left
    assert os.listdir(tmp_path) == ["m.schash"]


ANNOTATE_LOOP = """
    import sys
    import time
    import anndata as ad
    from schash._cli import main

    write = ad.AnnData.write_h5ad

    def write_then_pause(self, filename, *args, **kwargs):  # a wider window between the write and the rename
        write(self, filename, *args, **kwargs)
        time.sleep(0.2)

    ad.AnnData.write_h5ad = write_then_pause
    report, sys.stdout = sys.stdout, open("/dev/null", "w")  # main() prints its summary
    argv = ["annotate", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--overwrite", "--no-progress"]
    start = time.time()
    main(argv)  # a first run, so that every later one takes the same time
    print("ready", file=report, flush=True)
    print(time.time() - start, file=report, flush=True)
    while True:
        main(argv)
"""


def test_sigkill_during_annotate_output_leaves_whole_files(two_models, tmp_path, synth):
    from schash._cli import main

    model = two_models[0]
    query, out = tmp_path / "q.h5ad", tmp_path / "out.h5ad"
    synth.write_h5ad(query)
    assert main(["annotate", str(model), str(query), "-o", str(out), "--no-progress"]) == 0
    inputs = {p: _digest(p) for p in (model, query)}
    rng = np.random.default_rng(1)
    for _ in range(3):
        proc = _start(ANNOTATE_LOOP, model, query, out)
        one_run = float(proc.stdout.readline())
        time.sleep(rng.uniform(0, one_run))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        result = ad.read_h5ad(out)  # readable and complete
        assert result.n_obs == synth.n_obs and result.obs["schash_label"].notna().all()
        assert inputs == {p: _digest(p) for p in (model, query)}
    assert main(["annotate", str(model), str(query), "-o", str(out), "--overwrite", "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out.h5ad", "q.h5ad"]


def test_load_racing_resaves_never_mixes_two_models(two_models, tmp_path, synth):
    a, b = two_models
    query = synth[:60].copy()
    expected = [schash.load(p).predict(query)["label"].astype(str).to_numpy() for p in (a, b)]
    assert schash.load(a).cell_types == schash.load(b).cell_types[::-1]  # mixing them would swap labels
    target = tmp_path / "m.schash"
    schash.load(a).save(target)
    writer = _start(SAVE_LOOP, a, b, target)
    try:
        seen, start = set(), time.time()
        # a few seconds, longer only if a slow machine has not yet shown both versions
        while time.time() < start + 4.0 or (len(seen) < 2 and time.time() < start + 20.0):
            model = schash.load(target)
            labels = model.predict(query)["label"].astype(str).to_numpy()
            match = [i for i in (0, 1) if (labels == expected[i]).all()]
            assert match, "a load mixed two saves of the model: wrong labels"
            seen.add(tuple(model.cell_types))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert len(seen) == 2  # both versions were read while the file was being replaced
