"""Signed approvals: proof of who approved a run, for plan-file deployments (no API server
to authenticate anyone), checked with OpenSSH's own `ssh-keygen -Y`.

An approver signs one exact message — `approve PLAN RUN` or `approve PLAN RUN:STEP` and a
newline, the annotation's RUN[:STEP] form — in the namespace `failover-approval` with
their SSH key (`ssh-keygen -Y sign`, an agent or a hardware key works too). The plan names
an OpenSSH allowed_signers file (`approval.allowedSigners`): one line per person,
`PRINCIPAL [namespaces="failover-approval"] KEYTYPE KEY`. `verify` asks ssh-keygen which
principals the signing key belongs to (`-Y find-principals`), then has it verify the
signature over this run's message for that principal (`-Y verify`); the principal, not a
claimed name, is the approver. A signature of another run, plan, step or namespace, by a
key not listed, or not a signature at all is refused with `SignatureRefused` naming why
and how to sign. Owns the message format and the calls to ssh-keygen; who may approve and
four eyes are `controller.engine.people`'s.

A key that leaked or left with its owner is revoked without editing allowed_signers:
`approval.revokedKeys` names an OpenSSH KRL (`ssh-keygen -k`) or a file of revoked public
keys, and a good signature is verified once more against it (`-Y verify -r`), so its
refusal can say the key is revoked, not merely that the signature failed. A revocation
file ssh-keygen cannot read refuses every signature (it fails closed), saying so.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

NAMESPACE = "failover-approval"
_TIMEOUT = 30.0


class SignatureRefused(PermissionError):
    """An approval whose signature does not prove its approver; the message says why."""


@dataclass(frozen=True)
class Signed:
    signer: str  # the principal of allowed_signers whose key made the signature
    key: str  # what ssh-keygen says of the key, e.g. "ED25519 key SHA256:..."

    def proof(self) -> str:
        return f"signed by {self.signer} with {self.key} (ssh-keygen -Y, {NAMESPACE})"


def message(plan: str, run_id: str, step: str = "") -> bytes:
    """The exact bytes an approver signs for `run_id` (or its gated `step`) of `plan`."""
    return f"approve {plan} {run_id}{':' + step if step else ''}\n".encode()


def how_to_sign(plan: str, run_id: str, step: str = "", key: str = "~/.ssh/id_ed25519",
                out: str = "approval.sig") -> str:
    """The shell command that makes the signature `verify` accepts."""
    text = shlex.quote(message(plan, run_id, step).decode().rstrip("\n") + "\\n")
    return f"printf {text} | ssh-keygen -Y sign -f {key} -n {NAMESPACE} > {out}"


def verify(allowed_signers: Path, signature: Path, *, plan: str, run_id: str,
           step: str = "", claimed: str | None = None, revoked: Path | None = None) -> Signed:
    """Who signed this approval, proven by a key of `allowed_signers` not revoked in
    `revoked`; `claimed` (`--as`) picks the principal when the key is listed under
    several."""
    files = [(allowed_signers, "approval.allowedSigners"), (signature, "the signature file")]
    for path, what in files + ([(revoked, "approval.revokedKeys")] if revoked else []):
        if not path.is_file():
            raise SignatureRefused(f"{what} {path} does not exist or is not a file")
    sign = how_to_sign(plan, run_id, step)
    found = _ssh_keygen(["-Y", "find-principals", "-s", str(signature),
                         "-f", str(allowed_signers)])
    principals = [line.strip() for line in found.stdout.splitlines() if line.strip()]
    if found.returncode != 0 or not principals:
        raise SignatureRefused(
            f"the signature in {signature} is not made by any key in approval.allowedSigners "
            f"{allowed_signers} ({_said(found)}): sign with a key listed there: {sign}")
    if claimed is not None:
        if claimed not in principals:
            raise SignatureRefused(f"the signature in {signature} is by "
                                   f"{', '.join(principals)}, not {claimed}: leave out --as "
                                   f"or sign with {claimed}'s key")
        principals = [claimed]
    if len(principals) > 1:
        raise SignatureRefused(f"the key that signed {signature} is listed for "
                               f"{', '.join(principals)} in {allowed_signers}: say which "
                               "one approves with --as")
    [signer] = principals
    check = ["-Y", "verify", "-f", str(allowed_signers), "-I", signer, "-n", NAMESPACE,
             "-s", str(signature)]
    checked = _ssh_keygen(check, stdin=message(plan, run_id, step))
    if not _good(checked):
        raise SignatureRefused(
            f"the signature in {signature} by {signer} does not sign this approval "
            f"({_said(checked)}): it must sign exactly "
            f"{message(plan, run_id, step).decode()!r} in namespace {NAMESPACE}: {sign}")
    signed = Signed(signer, checked.stdout.strip().rpartition(" with ")[2])
    if revoked is not None:
        again = _ssh_keygen([*check, "-r", str(revoked)], stdin=message(plan, run_id, step))
        if not _good(again):
            raise SignatureRefused(_revoked(signed, signature, revoked, _said(again)))
    return signed


def _good(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and result.stdout.strip().startswith("Good")


def _revoked(signed: Signed, signature: Path, revoked: Path, said: str) -> str:
    """Why a good signature failed against `revoked`: its key is listed there, or the
    file is neither a KRL nor public keys (ssh-keygen fails closed on it)."""
    readable = (_ssh_keygen(["-Q", "-l", "-f", str(revoked)]).returncode == 0
                or _ssh_keygen(["-l", "-f", str(revoked)]).returncode == 0)
    if not readable:
        return (f"approval.revokedKeys {revoked} is neither an OpenSSH KRL nor a file of "
                f"public keys (ssh-keygen: {said}), so no signature is accepted: fix it, "
                "e.g. ssh-keygen -k -f FILE REVOKED.pub")
    return (f"the key that signed {signature}, {signed.signer}'s {signed.key}, is revoked "
            f"in approval.revokedKeys {revoked} (ssh-keygen: {said}): its signatures no "
            f"longer approve; {signed.signer} signs with a key listed in "
            "approval.allowedSigners and not revoked")


def _ssh_keygen(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=stdin.decode(), text=True,
                              capture_output=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SignatureRefused("ssh-keygen not found: install OpenSSH 8.2 or later (its "
                               "-Y sign / -Y verify check signed approvals)") from None
    except subprocess.TimeoutExpired:
        raise SignatureRefused(f"ssh-keygen {args[1]} did not answer within {_TIMEOUT:g} s; "
                               "the approval was not checked") from None


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """ssh-keygen's own reason, without its progress chatter."""
    lines = [line for line in (result.stderr + result.stdout).splitlines()
             if line.strip() and not line.startswith("Signing data on standard input")]
    return "; ".join(lines) or f"ssh-keygen exited {result.returncode}"
