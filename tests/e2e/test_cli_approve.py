"""`failoverctl approve` on a plan file, as a person runs it (issue 17 item 1): without a
signature the approver is the operating-system login, and `--as` cannot name someone
else; a plan with `approval.allowedSigners` takes only approvals signed with an SSH key
listed there (real `ssh-keygen -Y`), whose principal is the approver. Every refusal says
why and what to do, and leaves an audit row; nothing refused is counted."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import yaml

from controller import signing
from controller.journal import Journal, Run
from controller.model import Phase
from tests.e2e.test_cli import cli, file_plan
from tests.unit.test_signing import keygen, sign

LOGIN = pwd.getpwuid(os.getuid()).pw_name


def waiting_run(tmp: Path, approval: dict[str, Any]) -> tuple[Path, Path, Run]:
    """A manual plan with `approval`, and the login's failover waiting for approval."""
    plan = file_plan(tmp)
    data = yaml.safe_load(plan.read_text())
    data["spec"].update(mode="manual", approval=approval)
    plan.write_text(yaml.safe_dump(data))
    journal = tmp / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "dc-a is flooding", journal=journal)
    assert res.returncode == 4 and "waiting for approval" in res.stdout, res.stdout + res.stderr
    [run] = Journal(journal).runs("memory-drill")
    return plan, journal, run


def trail(journal: Path, run: Run) -> list[tuple[str, str]]:
    return [(a["actor"], a["action"]) for a in Journal(journal).audit_trail(run_id=run.id)]


def refused(res: subprocess.CompletedProcess[str], says: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_an_unsigned_approval_is_the_login_and_as_cannot_name_someone_else(
        tmp_path: Path) -> None:
    # one login both requests and approves here: no four eyes (distinct: false)
    plan, journal, run = waiting_run(tmp_path, {"approvers": ["bob"], "distinct": False})
    approve = ("approve", run.id, "--plan", str(plan))

    claimed = cli(*approve, "--as", "bob", journal=journal)
    refused(claimed, f"--as bob is refused: on a plan file you approve as your login, "
                     f"{LOGIN}: leave out --as, or ask bob to approve")
    refused(cli(*approve, journal=journal), f"{LOGIN} is not an approver of plan memory-drill "
                                            "(approvers: bob)")
    assert not Journal(journal).run(run.id).approved  # type: ignore[union-attr]
    assert trail(journal, run).count((LOGIN, "approval-refused")) == 2

    data = yaml.safe_load(plan.read_text())
    data["spec"]["approval"]["approvers"] = ["bob", LOGIN]
    plan.write_text(yaml.safe_dump(data))
    same = cli(*approve, "--as", LOGIN, "--wait", "60", journal=journal)  # --as $USER: fine
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"approved run of {run.id} as {LOGIN}" in same.stdout and "FailedOver" in same.stdout
    assert (LOGIN, "approve") in trail(journal, run)
    assert ("bob", "approve") not in trail(journal, run)


def test_the_login_that_requested_a_manual_failover_may_not_approve_it(
        tmp_path: Path) -> None:
    """The requester is the login too (not an --as), so four eyes holds on a plan file."""
    plan, journal, run = waiting_run(tmp_path, {"approvers": [LOGIN, "bob"]})
    assert Journal(journal).run(run.id).requested_by == LOGIN  # type: ignore[union-attr]
    refused(cli("approve", run.id, "--plan", str(plan), journal=journal),
            f"{LOGIN} requested run {run.id} and may not also approve it")
    assert trail(journal, run).count((LOGIN, "approval-refused")) == 1


def test_a_signed_plan_takes_the_approval_signed_as_its_refusal_says(tmp_path: Path) -> None:
    keys = {name: keygen(tmp_path, name) for name in ("bob", "mallory")}
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'bob namespaces="{signing.NAMESPACE}" '
                       f'{keys["bob"].with_suffix(".pub").read_text()}')
    plan, journal, run = waiting_run(tmp_path, {"allowedSigners": str(signers)})
    approve = ("approve", run.id, "--plan", str(plan))
    assert (LOGIN, "approve") not in trail(journal, run)  # the request is not signed

    refused(cli(*approve, "--as", "bob", journal=journal),
            f"--as bob is refused: on a plan file you approve as your login, {LOGIN}: "
            f"leave out --as, or have bob sign it (printf 'approve "
            f"memory-drill {run.id}\\n' | ssh-keygen -Y sign -f ~/.ssh/id_ed25519 -n "
            "failover-approval > approval.sig) and approve with --signature approval.sig")
    unsigned = cli(*approve, journal=journal)
    refused(unsigned, "plan memory-drill takes only signed approvals "
                      f"(approval.allowedSigners): approve with failoverctl approve {run.id} "
                      "--signature FILE, made by: printf")
    forged = sign(keys["mallory"], signing.message("memory-drill", run.id), tmp_path / "m.sig")
    refused(cli(*approve, "--signature", str(forged), "--as", "bob", journal=journal),
            f"the signature in {forged} is not made by any key in approval.allowedSigners")
    other_run = sign(keys["bob"], signing.message("memory-drill", "memory-drill-failover-9"),
                     tmp_path / "other.sig")
    refused(cli(*approve, "--signature", str(other_run), journal=journal),
            "does not sign this approval")
    refused(cli(*approve, "--signature", str(tmp_path / "none.sig"), journal=journal),
            "does not exist")
    assert not Journal(journal).run(run.id).approved  # type: ignore[union-attr]

    # the command the refusal printed, with bob's key, makes the approval that counts
    command = unsigned.stderr.split("made by: ", 1)[1].strip()
    command = command.replace("~/.ssh/id_ed25519", str(keys["bob"]))
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, capture_output=True)
    ok = cli(*approve, "--signature", str(tmp_path / "approval.sig"), "--wait", "60",
             journal=journal)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"approved run of {run.id} as bob" in ok.stdout and "FailedOver" in ok.stdout
    assert Journal(journal).run(run.id).phase is Phase.FAILED_OVER  # type: ignore[union-attr]
    audit = Journal(journal).audit_trail(run_id=run.id)
    [proven] = [a for a in audit if a["action"] == "approval-proven"]
    assert proven["actor"] == "bob" and "ED25519 key SHA256:" in proven["detail"]
    assert [a["actor"] for a in audit if a["action"] == "approve"] == ["bob"]
    assert sum(a["action"] == "approval-refused" for a in audit) == 4  # the missing file: not


def test_a_signature_is_for_plan_files_not_the_cluster(tmp_path: Path) -> None:
    sig = tmp_path / "approval.sig"
    sig.write_text("-----BEGIN SSH SIGNATURE-----\n")
    res = cli("approve", "shop-failover-1", "--plan", "fop/shop", "--signature", str(sig),
              journal=tmp_path / "j.db")
    refused(res, "--signature is for plans no operator acts on: in a cluster (fop/NAME, or "
                 "spec.coordination.kind: kubernetes) the API server proves who you are")
