"""``snapscope case``: look after a case directory: verify, seal, describe."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import console, fail
from toolkit.report.escape import rich_safe

app = typer.Typer(
    help="Check, seal and describe a case directory.\n\nExample: snapscope case verify cases/web01",
    no_args_is_help=True,
)


@app.command()
def verify(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    quick: bool = typer.Option(False, "--quick", help="Do not re-hash evidence and derived files (sizes only)."),
    pubkey: Path | None = typer.Option(
        None, "--pubkey", help="Public key (PEM) of whoever sealed the case: prove this copy is unaltered."
    ),
):
    """Verify the custody chain and its head, re-hash evidence and derived files, check the seal.

    Example: snapscope case verify cases/web01 --pubkey analyst.pub
    """
    from toolkit.case.verify import verify_case

    report = verify_case(case_dir, quick=quick, public_key=pubkey)
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {rich_safe(note)}")
    if report["problems"]:
        for problem in report["problems"]:
            console.print(f"[red]problem:[/] {rich_safe(problem)}")
        fail(f"{case_dir}: the case does not verify ({len(report['problems'])} problem(s))")
    hashed = "not re-hashed (--quick)" if quick else f"{report['evidence_checked']} re-hashed and unchanged"
    console.print(f"custody log intact: {report['events']} events; evidence files {hashed}")
    if report["seal"] is not None:
        console.print(
            f"seal verifies: {report['seal']['files']} files as sealed at {rich_safe(report['seal']['sealed_at'])}"
        )


@app.command()
def seal(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM), e.g. from `snapscope case keygen`."),
):
    """Sign every file's sha256 and the custody chain head into CASE/seal.json.

    Whoever receives a copy checks it with `snapscope case verify COPY --pubkey PUB`.

    Example: snapscope case seal cases/web01 --key analyst.key
    """
    from toolkit.case.seal import seal_case

    sealed = seal_case(case_dir, key)
    console.print(
        f"sealed {len(sealed['files'])} files and custody line {sealed['custody_head']['seq']} "
        f"with key {sealed['key_sha256'][:16]}: {rich_safe(case_dir / 'seal.json')}"
    )


@app.command()
def keygen(
    private: Path = typer.Option(..., "--private", help="Where to write the private key (PEM, mode 0600)."),
    public: Path = typer.Option(..., "--public", help="Where to write the public key (PEM) to give to others."),
):
    """Make an Ed25519 key pair for sealing cases (`openssl genpkey -algorithm ed25519` keys work too).

    Example: snapscope case keygen --private analyst.key --public analyst.pub
    """
    from toolkit.case.seal import generate_keypair

    fingerprint = generate_keypair(private, public)
    console.print(f"wrote {rich_safe(private)} and {rich_safe(public)}; key {fingerprint[:16]}")


@app.command()
def info(case_dir: Path = typer.Argument(..., help="The case directory.")):
    """Show the case's snapshots, tables and runs.

    Example: snapscope case info cases/web01
    """
    from toolkit.case import Case

    case = Case.open(case_dir)
    for sid, snap in case.snapshots.items():
        console.print(f"[bold]{rich_safe(sid)}[/] {rich_safe((snap or {}).get('name'))}")
        for name, rows in sorted(((snap or {}).get("tables") or {}).items()):
            console.print(f"  {rich_safe(name)}: {rich_safe(rows)} rows")
    for acq in (case.manifest.get("acquisitions") or {}).values():
        acq = acq if isinstance(acq, dict) else {}  # case.json may come from anyone: shapes are not trusted
        who = acq.get("who") if isinstance(acq.get("who"), dict) else {}
        console.print(
            f"acquired {rich_safe(acq.get('started'))} on {rich_safe(who.get('host'))} "
            f"by {rich_safe(who.get('user'))}: {rich_safe(acq.get('status'))} ({rich_safe(acq.get('dir'))})"
        )
        domains = acq.get("domains") if isinstance(acq.get("domains"), dict) else {}
        for name, dom in domains.items():
            dom = dom if isinstance(dom, dict) else {}
            pause = dom.get("pause") if isinstance(dom.get("pause"), dict) else {}
            console.print(
                f"  {rich_safe(name)}: {rich_safe(dom.get('mode'))}, guest paused {rich_safe(pause.get('seconds'))} s; "
                f"{rich_safe(dom.get('consistency'))}"
            )
    console.print(f"runs: {len(case.manifest.get('runs') or [])}")
