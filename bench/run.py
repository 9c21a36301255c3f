"""The benchmark's one command: ``python -m bench --quick`` or ``--full``.

Runs the sections in order (side by side, CPU only, scale, expiry, HTTP,
profile), prints the Markdown report to stdout and progress to stderr, and
writes ``bench/results/<mode>.json``, ``.md``, ``.png`` and
``<mode>-profile.txt``. Timing never makes it fail: goals are reported as met
or missed. It exits 1 only for a correctness failure (a counter that does not
equal the acknowledged increments, an HTTP error), which is a bug at any
speed. Scratch databases live in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/run.py`: import `bench` from the repository root
    # instead of the bench/ folder itself, whose modules would shadow others.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import report  # noqa: E402 (after the path fix above)
from bench.asgi_hops import asgi_hops  # noqa: E402
from bench.compare import CompareConfig, compare  # noqa: E402
from bench.counts import counts  # noqa: E402
from bench.expiry import expiry  # noqa: E402
from bench.http_compare import HttpConfig, http_compare  # noqa: E402
from bench.http_compare import failures as http_compare_failures  # noqa: E402
from bench.http_load import http_load  # noqa: E402
from bench.profiling import cpu_only, profile_requests  # noqa: E402
from bench.scale import scale  # noqa: E402

log = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = ("compare", "cpu", "scale", "expiry", "http", "counts", "http-compare", "profile")


@dataclass(frozen=True)
class Mode:
    """Every size and count of one mode."""

    compare: CompareConfig
    cpu: CompareConfig
    scale_sizes: tuple[int, ...]
    scale: CompareConfig
    expiry_total: int
    expiry_small: int
    expiry_large: int
    http_clients: int
    http_requests_per_client: int
    http_seconds: float
    http_compare: HttpConfig
    profile_requests: int
    counts_existing: int = 1_000  # sessions stored before the new ones are counted
    counts_new: int = 50  # new sessions counted
    counts_writes: int = 50  # writes per writer thread (16) for fsyncs per write


MODES = {
    # CI: under a minute, small S, enough requests to catch a gross regression.
    "quick": Mode(
        compare=CompareConfig(sessions=1_000, clients=16, requests=300, rounds=3, warmup=100),
        cpu=CompareConfig(sessions=1_000, clients=16, requests=300, rounds=3, warmup=100),
        scale_sizes=(1_000, 10_000),
        scale=CompareConfig(sessions=0, clients=16, requests=300, rounds=3, warmup=100),
        expiry_total=100_000, expiry_small=1_000, expiry_large=10_000,
        http_clients=16, http_requests_per_client=100, http_seconds=3.0,
        http_compare=HttpConfig(rounds=1, seconds=1),
        profile_requests=500,
    ),
    # The published figures.
    "full": Mode(
        compare=CompareConfig(sessions=10_000, clients=16, requests=1_500, rounds=15, warmup=500),
        cpu=CompareConfig(sessions=10_000, clients=16, requests=3_000, rounds=5, warmup=500),
        scale_sizes=(1_000, 100_000, 1_000_000),
        scale=CompareConfig(sessions=0, clients=16, requests=2_000, rounds=9, warmup=500),
        expiry_total=1_000_000, expiry_small=10_000, expiry_large=100_000,
        http_clients=16, http_requests_per_client=5_000, http_seconds=30.0,
        http_compare=HttpConfig(rounds=3, seconds=5, scale_out=True),
        profile_requests=5_000,
        counts_existing=10_000, counts_new=200, counts_writes=200,
    ),
}


def run(mode_name: str, sections: tuple[str, ...], command: str) -> dict[str, Any]:
    """Run the chosen sections of one mode; the results dictionary."""
    mode = MODES[mode_name]
    results: dict[str, Any] = {"mode": mode_name, "machine": report.machine(command),
                               "modes": {mode_name: asdict(mode)}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="zodbsession-bench-") as tmp:
        workdir = Path(tmp)
        for section in sections:
            started = time.monotonic()
            log.info("-- %s", section)
            directory = workdir / section
            directory.mkdir()
            if section == "compare":
                results["compare"] = compare(mode.compare, directory)
            elif section == "cpu":
                results["cpu_only"] = cpu_only(mode.cpu)
            elif section == "scale":
                results["scale"] = scale(mode.scale_sizes, mode.scale, directory)
            elif section == "expiry":
                results["expiry"] = expiry(mode.expiry_total, mode.expiry_small,
                                           mode.expiry_large, directory)
            elif section == "http":
                results["http"] = http_load(directory, mode.http_clients,
                                            mode.http_requests_per_client, mode.http_seconds)
            elif section == "counts":
                results["counts"] = counts(directory, existing=mode.counts_existing,
                                           new_sessions=mode.counts_new,
                                           writes_per_writer=mode.counts_writes)
                results["asgi_hops"] = asgi_hops(directory)
            elif section == "http-compare":
                results["http_compare"] = http_compare(mode.http_compare, directory)
            elif section == "profile":
                results["profile"] = profile_requests(mode.compare.sessions, mode.compare.clients,
                                                      mode.profile_requests)
            results["seconds"][section] = time.monotonic() - started
            log.info("-- %s done in %.1f s", section, results["seconds"][section])
    return results


def correctness_failures(results: dict[str, Any]) -> list[str]:
    """What is wrong at any speed: lost or phantom increments, HTTP errors."""
    failures = []
    for name, entry in results.get("compare", {}).get("contenders", {}).items():
        if entry.get("counters_match") is False:
            failures.append(f"{name}: a counter differs from its acknowledged writes")
    failures += http_compare_failures(results.get("http_compare", {}))
    http = results.get("http")
    if http and (http["errors"] or not http["counters_match"]):
        failures.append(f"http: {http['errors']} errors, counters match: {http['counters_match']}")
    return failures


def save(results: dict[str, Any], results_dir: Path, stem: str | None = None) -> str:
    """Write JSON, Markdown, plot and profile (named *stem*, by default the mode); the Markdown."""
    mode = results["mode"]
    stem = stem or mode
    profile = results.pop("profile", None)
    report.write_json(results, results_dir / f"{stem}.json")
    text = report.render(results)
    (results_dir / f"{stem}.md").write_text(text)
    if "compare" in results:
        report.plot(results, results_dir / f"{mode}.png")
    if "contenders" in results.get("http_compare", {}):
        from bench.http_compare import plot as plot_http

        plot_http(results["http_compare"], results_dir / f"{mode}-http.png")
    if profile:
        (results_dir / f"{mode}-profile.txt").write_text(profile)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="mode",
                       help="under a minute, for CI (the default)")
    group.add_argument("--full", action="store_const", const="full", dest="mode",
                       help="the published figures (S up to 1,000,000; about 10 minutes)")
    group.add_argument("--http", action="store_const", const="http", dest="mode",
                       help="only the side-by-side run over HTTP with wrk, at the published size")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON, Markdown, plot and profile go (default bench/results)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="print the report of a saved results file and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.render:
        print(report.render(json.loads(args.render.read_text())))
        return 0
    mode = args.mode or "quick"
    sections = tuple(args.only) if args.only else SECTIONS
    stem = None
    if mode == "http":  # the full run's size, saved beside the full run's results, not over them
        mode, sections, stem = "full", tuple(args.only or ("counts", "http-compare")), "full-http"
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    results = run(mode, sections, command)
    results["seconds"]["total"] = time.monotonic() - started
    print(save(results, args.results_dir, stem))
    log.info("whole run: %.1f s; results in %s", results["seconds"]["total"], args.results_dir)
    failures = correctness_failures(results)
    for failure in failures:
        log.error("correctness failure: %s", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
