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
           step: str = "", claimed: str | None = None) -> Signed:
    """Who signed this approval, proven by a key of `allowed_signers`; `claimed` (`--as`)
    picks the principal when the key is listed under several."""
    for path, what in ((allowed_signers, "approval.allowedSigners"),
                       (signature, "the signature file")):
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
    checked = _ssh_keygen(["-Y", "verify", "-f", str(allowed_signers), "-I", signer,
                           "-n", NAMESPACE, "-s", str(signature)],
                          stdin=message(plan, run_id, step))
    said = checked.stdout.strip()
    if checked.returncode != 0 or not said.startswith("Good"):
        raise SignatureRefused(
            f"the signature in {signature} by {signer} does not sign this approval "
            f"({_said(checked)}): it must sign exactly "
            f"{message(plan, run_id, step).decode()!r} in namespace {NAMESPACE}: {sign}")
    return Signed(signer, said.rpartition(" with ")[2])


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
