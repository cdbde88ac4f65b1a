"""The ``steer`` command line: ``steer generate``, ``steer finetune``, ``steer rewards``, ``steer methods``,
``steer serve-reward``.

Bad input exits with code 2 and one line on stderr (``--debug`` shows the traceback).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.core

from steer import io
from steer.errors import SteerError

class _OneLineErrors(typer.core.TyperGroup):
    """click's usage errors (a bad flag, a value of the wrong type) as one line on stderr, exit 2,
    instead of click's usage block or typer's rich box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # typer's (vendored) click exceptions
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # bare ``steer``: the help
                typer.echo(ctx.get_help(), err=True)
                sys.exit(getattr(e, "exit_code", 2))
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = " ".join((e.format_message() if hasattr(e, "format_message") else str(e)).split())
            typer.echo(f"error: {message}{hint}", err=True)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reward steering for diffusers pipelines.")


def _fail(message: str, debug: bool, exc: Optional[BaseException] = None) -> None:
    """What ``steer methods`` does with an error (the other commands run inside ``io.boundary``)."""
    if (debug and exc is not None) or isinstance(exc, BrokenPipeError):
        raise exc
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _method_kwargs(method: str, explicit: dict, extra: List[str]) -> dict:
    """The method's options: the explicit flags, then ``--option KEY=VALUE`` typed by its defaults."""
    from steer.catalog import check_options, method_options, resolve_method

    fn = resolve_method(method)
    kwargs = {k: v for k, v in explicit.items() if v is not None}
    kwargs.update(io.parse_options(extra, method_options(fn), "--option"))
    check_options(fn, kwargs, method)
    return kwargs


def _scalar(value) -> Optional[float]:
    """A number to show for a per-prompt record (lists: their mean), or None."""
    if value is None:
        return None
    try:
        import torch

        return float(torch.as_tensor(value, dtype=torch.float32).mean())
    except (TypeError, ValueError):
        return None


def _since_process_start() -> Optional[float]:
    try:
        import time

        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - the figure is informative only
        return None


def _breakdown(timing: dict) -> str:
    """The --verbose time table: start-up (interpreter and imports), load, denoise, decode, reward, other."""
    if "per_rank" in timing:
        return json.dumps(timing, indent=2)
    wall = _since_process_start()
    rows = []
    if wall is not None:
        rows.append(("start-up (python, imports)", max(0.0, wall - timing["total_seconds"])))
    rows += [("load (pipeline, reward)", timing["load_seconds"]), ("denoise", timing["denoise_seconds"]),
             ("decode", timing["decode_seconds"]), ("reward", timing["reward_seconds"]),
             ("other (method, writing)", timing["other_seconds"])]
    total = wall if wall is not None else timing["total_seconds"]
    rows.append(("total" + (" since process start" if wall is not None else ""), total))
    return "\n".join(f"  {name:28s} {sec:7.2f} s  {100 * sec / max(total, 1e-9):5.1f}%" for name, sec in rows)


class _Progress:
    """A live rich display fed by the methods' StepInfo callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task("starting")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def prompt(self, k: int, total: int, text: str) -> None:
        self.where = f"prompt {k + 1}/{total}"

    def __call__(self, info) -> None:
        if self.progress is None:
            return
        extra = getattr(info, "extra", {}) or {}
        parts = [getattr(self, "where", ""), f"step {info.step}", f"NFE {info.nfe}"]
        for key in ("particles", "ess", "best_reward"):
            value = _scalar(extra.get(key))
            if value is not None:
                parts.append(f"{key.replace('_', ' ')} {value:.3g}")
        self.progress.update(self.task, description="  ".join(p for p in parts if p))


@app.command()
def generate(
    prompt: List[str] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="A text file with one prompt per line."),
    method: str = typer.Option("fk", "--method", "-m", help="Steering method (see `steer methods`)."),
    reward: Optional[str] = typer.Option(None, "--reward", "-r", help="Reward spec, e.g. hps or hps=1,clip=0.5 "
                                         "(default: shapes-clip on the embedded model, else hps)."),
    eval_reward: Optional[str] = typer.Option(None, "--eval-reward", help="A held-out reward spec scored on the "
                                              "final images only, never steering them (trace.json, PNG metadata)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model id or local diffusers folder (default: the embedded model)."),
    particles: Optional[int] = typer.Option(None, "--particles", help="FK particles per prompt."),
    n: Optional[int] = typer.Option(None, "--n", help="Best-of-N candidates per prompt."),
    lam: Optional[float] = typer.Option(None, "--lam", help="Reward temperature λ (fk, dts)."),
    potential: Optional[str] = typer.Option(None, "--potential", help="FK potential: max, difference, sum, immediate."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="ReNO / zero-order iterations."),
    rollouts: Optional[int] = typer.Option(None, "--rollouts", help="Tree-search rollouts."),
    option: List[str] = typer.Option(None, "--option", "-o", help="Any other method option, KEY=VALUE (repeatable)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="num_inference_steps."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="guidance_scale."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", help="Frames per video (video pipelines: "
                                             "Wan, LTX-Video; they also write NNN.mp4)."),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt"),
    nfe_budget: Optional[int] = typer.Option(None, "--nfe-budget", help="Cap on denoiser calls per prompt."),
    seed: int = typer.Option(0, "--seed"),
    out: str = typer.Option("out", "--out", help="Output folder."),
    save_all: bool = typer.Option(False, "--save-all", help="Also save every particle / candidate."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu, ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float16, bfloat16 or float32."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: skip the prompts whose image "
                                "is there and in trace.json (same settings; more prompts may be appended)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the earlier run's images and trace in --out "
                                   "first."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print the time breakdown."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Generate one reward-steered image per prompt into --out (NNN.png, grid.png, trace.json; a video
    pipeline also writes NNN.mp4).

    --out holds one run: a used folder is refused unless --resume or --overwrite."""
    with io.boundary(debug, interrupted="interrupted: finished images and trace.json were kept"):
        from steer.api import default_reward
        from steer.run import run_generate

        from steer.run_options import RunOptions
        from steer.toolkit import MAX_COUNT

        for flag, v, least in (("--particles", particles, 1), ("--n", n, 1), ("--iterations", iterations, 0),
                               ("--rollouts", rollouts, 1)):
            if v is not None and not least <= v <= MAX_COUNT:
                raise SteerError(f"{flag} must be >= {least} and <= {MAX_COUNT} (the limit), got {v}")
        if not out.strip():
            raise SteerError("--out is empty; give the output folder, e.g. --out out")
        prompts = io.read_prompts(prompts_file, given=prompt)
        if negative_prompt:
            io.check_prompt(negative_prompt, "--negative-prompt")
        run = RunOptions.check(flags=True, seed=seed, steps=steps, guidance_scale=guidance, height=height, width=width,
                               negative_prompt=negative_prompt, nfe_budget=nfe_budget, num_frames=num_frames,
                               device=device, dtype=dtype)
        kwargs = _method_kwargs(method, dict(particles=particles, n=n, lam=lam, potential=potential,
                                             iterations=iterations, rollouts=rollouts), option or [])
        out_dir = io.output_dir(Path(out))
        with _Progress(enabled=True) as progress:
            reward = reward or default_reward(model)
            summary = run_generate(prompts, out_dir, method=method, reward=reward, model=model, run=run,
                                   save_all=save_all, options=kwargs, progress=progress, resume=resume,
                                   overwrite=overwrite, eval_reward=eval_reward)
        if summary is not None:
            kept = f", {summary['skipped']} already there" if summary.get("skipped") else ""
            typer.echo(f"wrote {summary['written']} image(s) to {out_dir}{kept}  "
                       f"(NFE/prompt {summary['nfe_per_prompt']:.0f}, {summary['seconds']:.1f}s)")
            if verbose:
                typer.echo(_breakdown(summary["timing"]))


@app.command()
def rewards(debug: bool = typer.Option(False, "--debug")):
    """The table of rewards: differentiable or not, weights needed, where to get them."""
    with io.boundary(debug):
        from rich.console import Console
        from rich.table import Table

        from steer.rewards.registry import table as reward_table

        t = Table()
        for header in ("name", "differentiable", "weights", "where to get them", "point at them with"):
            t.add_column(header, overflow="fold")  # long paths and URLs wrap, never end in "…"
        for row in reward_table(include_forms=True):  # and the http://HOST:PORT form
            t.add_row(row["name"], "yes" if row["differentiable"] else "no", row["weights"] or "-",
                      row["source"] or "-", row["point_at"] or "-")
        Console(width=200).print(t)


@app.command()
def methods(debug: bool = typer.Option(False, "--debug")):
    """The methods with their options and defaults: one block per method (name, aliases, the first
    line of its docstring, then its options on one unwrapped line)."""
    try:
        from steer.catalog import ALIASES, METHODS, options_text, resolve_method

        for name in METHODS:
            aliases = ", ".join(a for a, m in ALIASES.items() if m == name)
            head = f"{name}" + (f" ({aliases})" if aliases else "")
            try:
                fn = resolve_method(name)
            except Exception as e:  # noqa: BLE001 - a method not installed is listed as such
                typer.echo(f"{head}: unavailable: {e}")
                continue
            summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
            typer.echo(f"{head}: {summary}\n    {options_text(fn)}")
    except Exception as e:  # noqa: BLE001
        _fail(str(e), debug, e)


from steer.finetune.command import finetune  # noqa: E402  (``steer finetune``)

app.command("finetune")(finetune)

from steer.rewards.serve_command import serve_reward  # noqa: E402  (``steer serve-reward``)

app.command("serve-reward")(serve_reward)

from steer.finetune.lora_export import lora_app  # noqa: E402  (``steer lora export``)

app.add_typer(lora_app(), name="lora")


def main() -> None:
    # the current directory is never put on sys.path here: ``--reward mymodule:score`` looks for
    # ``mymodule`` in the current directory only when it is not importable otherwise
    # (``steer.rewards.combine.import_dotted``), so a stray ``psutil.py`` there shadows nothing
    try:
        app()
    except KeyboardInterrupt:  # a Ctrl-C outside a command's boundary (imports, start-up, exit): no traceback
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BrokenPipeError:  # ``steer methods | head``: the reader left; say nothing, exit as SIGPIPE would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        sys.exit(141)


if __name__ == "__main__":
    main()
