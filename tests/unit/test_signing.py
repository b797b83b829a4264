"""Signed approvals with OpenSSH's real `ssh-keygen -Y`: keys made here, an allowed_signers
file, and signatures of the right and of the wrong message, namespace and key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller import signing
from controller.journal import Journal
from controller.model import Phase
from controller.plan import PlanError
from controller.signing import SignatureRefused
from tests.unit.test_engine import World, make_plan


def keygen(tmp: Path, name: str) -> Path:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return key


def sign(key: Path, data: bytes, out: Path, namespace: str = signing.NAMESPACE) -> Path:
    with out.open("wb") as sig:
        subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace],
                       input=data, stdout=sig, stderr=subprocess.DEVNULL, check=True)
    return out


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Keys of bob and carol (listed in tmp/allowed_signers) and mallory (not listed)."""
    made = {name: keygen(tmp_path, name) for name in ("bob", "carol", "mallory")}
    lines = [f'{name} namespaces="{signing.NAMESPACE}" '
             f'{made[name].with_suffix(".pub").read_text().strip()}' for name in ("bob", "carol")]
    (tmp_path / "allowed_signers").write_text("\n".join(lines) + "\n")
    return made


def verify(tmp: Path, sig: Path, run_id: str = "shop-failover-1", step: str = "",
           claimed: str | None = None) -> signing.Signed:
    return signing.verify(tmp / "allowed_signers", sig, plan="shop", run_id=run_id,
                          step=step, claimed=claimed)


def test_a_signature_of_this_approval_names_its_signer(tmp_path: Path,
                                                       keys: dict[str, Path]) -> None:
    sig = sign(keys["bob"], signing.message("shop", "shop-failover-1"), tmp_path / "a.sig")
    signed = verify(tmp_path, sig)
    assert signed.signer == "bob" and signed.key.startswith("ED25519 key SHA256:")
    assert signing.message("shop", "r", "dns") == b"approve shop r:dns\n"
    # a gated step is its own message
    step_sig = sign(keys["carol"], signing.message("shop", "shop-failover-1", "dns"),
                    tmp_path / "s.sig")
    assert verify(tmp_path, step_sig, step="dns").signer == "carol"


def test_the_printed_sign_command_makes_a_signature_that_verifies(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    command = signing.how_to_sign("shop", "shop-failover-1", "dns", key=str(keys["bob"]),
                                  out=str(tmp_path / "cmd.sig"))
    subprocess.run(command, shell=True, check=True, stderr=subprocess.DEVNULL)
    assert verify(tmp_path, tmp_path / "cmd.sig", step="dns").signer == "bob"


def test_a_key_not_in_allowed_signers_is_refused(tmp_path: Path,
                                                 keys: dict[str, Path]) -> None:
    sig = sign(keys["mallory"], signing.message("shop", "shop-failover-1"), tmp_path / "m.sig")
    with pytest.raises(SignatureRefused, match=r"not made by any key in approval\."
                                               r"allowedSigners .*No principal matched"):
        verify(tmp_path, sig)


@pytest.mark.parametrize(("data", "namespace", "said"), [
    (signing.message("shop", "shop-failover-2"), signing.NAMESPACE, "incorrect signature"),
    (signing.message("shop", "shop-failover-1", "dns"), signing.NAMESPACE,
     "incorrect signature"),
    (signing.message("shop", "shop-failover-1"), "git", "namespace"),
], ids=["another run", "a step, not the run", "another namespace"])
def test_a_signature_of_anything_else_is_refused(tmp_path: Path, keys: dict[str, Path],
                                                 data: bytes, namespace: str, said: str) -> None:
    sig = sign(keys["bob"], data, tmp_path / "x.sig", namespace)
    with pytest.raises(SignatureRefused) as refused:
        verify(tmp_path, sig)
    text = str(refused.value)
    assert said in text and "'approve shop shop-failover-1\\n'" in text
    assert "ssh-keygen -Y sign" in text  # and how to make the right one


def test_a_claimed_name_must_be_the_signer(tmp_path: Path, keys: dict[str, Path]) -> None:
    sig = sign(keys["bob"], signing.message("shop", "shop-failover-1"), tmp_path / "b.sig")
    with pytest.raises(SignatureRefused, match="is by bob, not carol"):
        verify(tmp_path, sig, claimed="carol")
    assert verify(tmp_path, sig, claimed="bob").signer == "bob"


def test_missing_or_garbled_files_are_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(SignatureRefused, match=r"the signature file .* does not exist"):
        verify(tmp_path, tmp_path / "nothing.sig")
    (tmp_path / "junk.sig").write_text("not a signature\n")
    with pytest.raises(SignatureRefused, match="not made by any key"):
        verify(tmp_path, tmp_path / "junk.sig")
    sig = sign(keys["bob"], signing.message("shop", "shop-failover-1"), tmp_path / "b.sig")
    with pytest.raises(SignatureRefused, match=r"approval.allowedSigners .* does not exist"):
        signing.verify(tmp_path / "none", sig, plan="shop", run_id="shop-failover-1")


def test_no_ssh_keygen_is_said(tmp_path: Path, keys: dict[str, Path],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    sig = sign(keys["bob"], signing.message("shop", "shop-failover-1"), tmp_path / "b.sig")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SignatureRefused, match="ssh-keygen not found: install OpenSSH"):
        verify(tmp_path, sig)


# --- through the engine: a plan that takes only signed approvals ---------------------------

def signed_plan_world(journal: Journal, tmp: Path) -> World:
    world = World(make_plan(lambda s: s.update(mode="manual", approval={
        "allowedSigners": str(tmp / "allowed_signers")})), journal)
    world.tick(True)
    world.engine.request("failover", actor="carol", reason="dc-a is flooding")
    world.engine.reconcile()
    return world


def test_a_signed_plan_takes_a_signed_approval_and_audits_the_key(
        journal: Journal, tmp_path: Path, keys: dict[str, Path]) -> None:
    world = signed_plan_world(journal, tmp_path)
    run = world.run()
    assert not run.approved  # carol's request is no approval: it is not signed

    with pytest.raises(PermissionError, match=r"takes only signed approvals .* --signature"):
        world.engine.approve(run.id, actor="bob")
    sig = sign(keys["bob"], signing.message("memory-drill", run.id), tmp_path / "bob.sig")
    assert world.engine.people.approve_signed(run.id, sig) == "bob"
    world.engine.reconcile()
    assert world.run().phase is Phase.FAILED_OVER

    trail = [(a["actor"], a["action"]) for a in journal.audit_trail(run_id=run.id)]
    assert ("bob", "approval-refused") in trail and ("bob", "approve") in trail
    [proven] = [a for a in journal.audit_trail(run_id=run.id)
                if a["action"] == "approval-proven"]
    assert proven["actor"] == "bob" and "ED25519 key SHA256:" in proven["detail"]


def test_a_forged_or_self_signed_approval_is_refused_and_audited(
        journal: Journal, tmp_path: Path, keys: dict[str, Path]) -> None:
    world = signed_plan_world(journal, tmp_path)
    run = world.run()
    message = signing.message("memory-drill", run.id)
    forged = sign(keys["mallory"], message, tmp_path / "mallory.sig")
    with pytest.raises(PermissionError, match="not made by any key"):
        world.engine.people.approve_signed(run.id, forged, claimed="bob")
    own = sign(keys["carol"], message, tmp_path / "carol.sig")  # carol requested the run
    with pytest.raises(PermissionError, match=r"carol requested run .*four eyes"):
        world.engine.people.approve_signed(run.id, own)
    world.engine.reconcile()
    assert not world.run().approved
    refused = [(a["actor"], a["detail"]) for a in journal.audit_trail(run_id=run.id)
               if a["action"] == "approval-refused"]
    assert [who for who, _ in refused] == ["bob", "carol"]
    assert "not made by any key" in refused[0][1]


def test_a_signature_on_a_plan_without_allowed_signers_is_refused(
        journal: Journal, tmp_path: Path, keys: dict[str, Path]) -> None:
    world = World(make_plan(lambda s: s.update(mode="manual")), journal)
    world.tick(True)
    world.engine.request("failover", actor="carol", reason="dc-a is flooding")
    world.engine.reconcile()
    run = world.run()
    sig = sign(keys["bob"], signing.message("memory-drill", run.id), tmp_path / "bob.sig")
    with pytest.raises(PermissionError, match=r"names no approval\.allowedSigners to check"):
        world.engine.people.approve_signed(run.id, sig)
    assert not world.engine.people.approved(run.id)


# --- revoked keys: approval.revokedKeys, a KRL or a file of public keys --------------------

@pytest.fixture
def bob_revoked(tmp_path: Path, keys: dict[str, Path]) -> dict[str, Path]:
    """bob's key revoked in a KRL (`ssh-keygen -k`) and in a file of public keys."""
    krl = tmp_path / "revoked.krl"
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(krl), str(keys["bob"]) + ".pub"],
                   check=True, capture_output=True)
    listed = tmp_path / "revoked.pub"
    listed.write_text("# bob's laptop, stolen\n" + keys["bob"].with_suffix(".pub").read_text())
    return {"krl": krl, "keys": listed}


@pytest.mark.parametrize("form", ["krl", "keys"])
def test_a_signature_by_a_revoked_key_is_refused_saying_so(
        tmp_path: Path, keys: dict[str, Path], bob_revoked: dict[str, Path],
        form: str) -> None:
    message = signing.message("shop", "shop-failover-1")
    bobs = sign(keys["bob"], message, tmp_path / "b.sig")
    revoked = bob_revoked[form]
    with pytest.raises(SignatureRefused) as refused:
        signing.verify(tmp_path / "allowed_signers", bobs, plan="shop",
                       run_id="shop-failover-1", revoked=revoked)
    said = str(refused.value)
    assert f"the key that signed {bobs}, bob's ED25519 key SHA256:" in said
    assert f"is revoked in approval.revokedKeys {revoked} (ssh-keygen: " in said
    assert "Could not verify signature" in said  # ssh-keygen's own words
    carols = sign(keys["carol"], message, tmp_path / "c.sig")  # carol's key still counts
    assert signing.verify(tmp_path / "allowed_signers", carols, plan="shop",
                          run_id="shop-failover-1", revoked=revoked).signer == "carol"


def test_a_revocation_file_that_cannot_be_read_refuses_every_signature(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    carols = sign(keys["carol"], signing.message("shop", "shop-failover-1"), tmp_path / "c.sig")
    garbled = tmp_path / "garbled"
    garbled.write_text("not a key list\n")
    for revoked, says in ((garbled, "is neither an OpenSSH KRL nor a file of public keys"),
                          (tmp_path / "none.krl", r"approval\.revokedKeys .* does not exist")):
        with pytest.raises(SignatureRefused, match=says):
            signing.verify(tmp_path / "allowed_signers", carols, plan="shop",
                           run_id="shop-failover-1", revoked=revoked)


def test_revoked_keys_need_allowed_signers() -> None:
    with pytest.raises(PlanError, match=r"spec\.approval: revokedKeys revokes keys "
                                        "of allowedSigners, which is not set"):
        make_plan(lambda s: s.update(approval={"revokedKeys": "/etc/failover/revoked.krl"}))


def test_the_engine_refuses_and_audits_an_approval_signed_by_a_revoked_key(
        journal: Journal, tmp_path: Path, keys: dict[str, Path],
        bob_revoked: dict[str, Path]) -> None:
    world = World(make_plan(lambda s: s.update(mode="manual", approval={
        "allowedSigners": str(tmp_path / "allowed_signers"),
        "revokedKeys": str(bob_revoked["krl"])})), journal)
    world.tick(True)
    world.engine.request("failover", actor="carol", reason="dc-a is flooding")
    world.engine.reconcile()
    run = world.run()
    sig = sign(keys["bob"], signing.message("memory-drill", run.id), tmp_path / "bob.sig")
    with pytest.raises(PermissionError, match=r"is revoked in approval\.revokedKeys"):
        world.engine.people.approve_signed(run.id, sig)
    world.engine.reconcile()
    assert not world.run().approved
    [refused] = [a for a in journal.audit_trail(run_id=run.id)
                 if a["action"] == "approval-refused"]
    assert "Could not verify signature" in refused["detail"]
