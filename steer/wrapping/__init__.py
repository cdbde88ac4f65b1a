"""``steer.wrap``: a diffusers pipeline that steers itself, called with its own signature.

This package is ``steer.wrapping`` (``methods``: the particle methods; ``step``: the scheduler tap;
``decode``: latents -> images / videos by the family's rule; ``output``: what is read off the call and written
back into its output), not ``steer.wrap``: importing a submodule binds it as an attribute of its parent
package, so a package ``steer/wrap/`` would replace the function ``steer.wrap`` with a module the first time
any of its modules is imported.

    steered = steer.wrap(pipe, method="fk", reward="hps", particles=8)
    out = steered("a cat", num_inference_steps=30, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    out.images            # the pipeline's own output class, one image per prompt (output_type as asked)
    out.frames            # a video pipeline's (Wan, LTX-Video): one video per prompt, as the pipeline returns it
    out.rewards, out.steer_trace, out.candidate_rewards, out.log_weights (FK), out.steer_latents

What runs where. The particle methods run *inside* the pipeline's own ``__call__``: it is called once with
``num_images_per_prompt=K`` (a video pipeline's ``num_videos_per_prompt``; K particles per prompt,
prompt-major; pipelines without that argument get the prompt list repeated), ``output_type="latent"``, and a
``callback_on_step_end`` that hands the latents to the method after every step (``steer.wrapping.methods``);
the method may replace them — FK resamples particles there and, in kernel mode, adds the kernel's noise.
``pipe.scheduler.step`` is wrapped for the call (``steer.wrapping.step``) to read the model output it is
given: x̂0 and steer's kernel (DDIM η / Flow-GRPO SDE) at that step; it is restored afterwards, also on
errors. The final K·P latents are decoded with the family's rule (``steer.pipelines.decoding``, the rule the
family's adapter decodes with), scored, and the best of each prompt is post-processed by the pipeline's own
``image_processor`` into the pipeline's output class. Video pipelines (Wan 2.x, LTX-Video) are decoded to
videos and post-processed by their ``video_processor`` into their ``frames`` field, one video per prompt;
rewards read them as under ``steer.generate``: an image reward scores each video's frame grid
(``steer.pipelines.video``, ``frame_layout="grid"``), a video reward (``space = "video"``, e.g.
``hps@frames:min``) the frames. The call's ``height`` / ``width`` / ``num_frames`` (its defaults when unset)
and LTX-Video's ``decode_timestep`` reach the decoder; noise blended in at decode (``decode_noise_scale`` ≠ 0)
is refused, as the LTX adapter refuses it.

Methods (by their ``steer.catalog`` names, its aliases too): ``best_of_n`` / ``bon`` (``n``; by default the
pipeline's own scheduler samples, any scheduler; ``noise_level`` > 0 uses steer's kernel) and ``fk``
(``steer.samplers.fk``'s options and defaults except ``guidance``, which needs gradients through the denoiser;
needs a first-order ᾱ or flow-σ scheduler: DDIM, DDPM, DPM-Solver, FlowMatchEuler, ...).

Same images as ``steer.generate``: for ``StableDiffusionPipeline`` with its scheduler a ``DDIMScheduler``
(steer samples SD with DDIM on the config's schedule), the same seed as a ``torch.Generator`` and the same
options, ``wrap(pipe, method="fk", ...)`` gives the particles, the resampling and the images of
``steer.generate(pipe, prompt, method="fk", ...)``: the pipeline draws the initial noise first from the
generator, as steer does, then every step draws the resampling uniforms and the kernel noise from it in
steer's order (``tests/test_wrap.py`` checks equality). The same holds for the flow families with a
``FlowMatchEulerDiscreteScheduler`` whose adapter draws x_T as the pipeline does: LTX-Video bit for bit, Wan
2.x and Qwen-Image to float rounding (their pipelines call the transformer twice per step, cond and uncond,
where steer makes one batched call; ``tests/test_wrap_video.py``), Wan 2.2's two experts and Wan's released
UniPC scheduler with flow sigmas included (FK's kernel is the Euler SDE on UniPC's σ grid, as steer.generate's
Wan adapter runs it; best-of-N without ``noise_level`` samples with UniPC itself, so it differs). FLUX.2:
best-of-N equal bit for bit; FK's kernel noise is drawn in the pipeline's token layout (B, h·w, 4C),
steer.generate's in its adapter's patches (B, 4C, h, w): the same distribution, other draws. A pipeline whose
first argument is not ``prompt`` (FLUX.2: ``image``) gets the prompt by keyword. With another scheduler class
the pipeline's own schedule (timesteps, σ's) is used, so the chains differ from steer.generate's DDIM; with a
list of generators the draws cannot line up (refused).

Not supported: ``return_dict=False`` gives the pipeline's tuple (the trace is then ``steered.last``), a list
of generators, ``num_images_per_prompt`` / ``num_videos_per_prompt`` > 1 (K is the method's), prompts given
only as embeddings (rewards read the prompt text), ``decode=fn`` for a video pipeline (video pipelines without
a rule: HunyuanVideo, CogVideoX, ...), a frame layout other than the grid, the safety checker (latents are
decoded by steer; the pipeline's ``run_safety_checker`` is applied when it has one), FK's gradient proposal,
pipelines that step other than once per step through ``pipe.scheduler``.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Optional

import torch

from steer.budget import Trace
from steer.errors import SteerError
from steer.scoring import reads_latents, reward_input, score_images
from steer import catalog, toolkit
from steer.wrapping import decode as wrap_decode, methods as wrap_methods, output as wrap_output, step as wrap_step


def wrap(pipe, method: str = "fk", reward=None, *, decode: Optional[Callable] = None, **options) -> "Steered":
    """A callable with ``pipe``'s own call signature that returns ``pipe``'s own output type with one
    steered image (a video pipeline: video) per prompt. ``method``: ``"fk"`` or ``"best_of_n"``
    (``"bon"``); ``reward``: a spec, a ``Reward`` or a callable (images, prompts) -> scores; ``options``: the
    method's (``particles=``, ``lam=``, ``n=``, ...); ``decode``: latents -> images in [-1, 1] for an image
    pipeline not in ``steer.pipelines.decoding``. A pipeline that cannot be steered is refused here in one line."""
    method = _method_name(method)
    if reward is None:
        raise SteerError("steer.wrap: pass reward= (a spec such as 'hps', a Reward, or a callable "
                         "images, prompts -> scores)")
    _check_pipeline(pipe)
    decoder = wrap_decode.decoder_for(pipe, decode)
    from steer import rewards  # heavy: loaded when a pipeline is wrapped

    model = rewards.resolve(reward, getattr(pipe, "device", None), who="steer.wrap")
    try:
        particles = wrap_methods.METHODS[method](model, **options)
    except TypeError as e:
        call_args = [k for k in options if k in inspect.signature(pipe.__call__).parameters]
        if call_args:
            raise SteerError(f"steer.wrap({method}): {call_args[0]}= is an argument of the pipeline's call, not of "
                             f"the method; pass it to the call: steer.wrap(pipe, ...)(prompt, {call_args[0]}=...)") from None
        raise SteerError(f"steer.wrap({method}): {e}".splitlines()[0]) from None
    level = particles.kernel_level(wrap_step.chain_kind(pipe.scheduler) or "diffusion")
    if level is not None:
        wrap_step.check_kernel_scheduler(pipe.scheduler, method)
    return Steered(pipe, particles, decoder.custom)


def _method_name(method) -> str:
    """The catalog name of ``method`` (``steer.catalog.ALIASES`` resolved) if it runs inside a pipeline call,
    else a one-line error."""
    key = catalog.ALIASES.get(method.lower(), method.lower()) if isinstance(method, str) else None
    if key not in wrap_methods.METHODS:
        names = [n for n in wrap_methods.METHODS] + [a for a, n in catalog.ALIASES.items() if n in wrap_methods.METHODS]
        raise SteerError(f"steer.wrap: method {method!r} does not run inside a pipeline call; choose one of "
                         f"{', '.join(names)} (other methods: steer.generate)")
    return key


def _check_pipeline(pipe) -> None:
    name = type(pipe).__name__
    if not callable(pipe) or not hasattr(pipe, "scheduler"):
        shown = f" {pipe!r}"[:60] if isinstance(pipe, (str, bytes, int, float)) else ""
        hint = "; to steer a model by name use steer.generate(model, ...)" if isinstance(pipe, (str, bytes)) else ""
        raise SteerError(f"steer.wrap: pipe must be a diffusers pipeline (DiffusionPipeline.from_pretrained(...)), got "
                         f"{name}{shown}{hint}")
    denoisers = [k for k in ("unet", "transformer") if k in (getattr(pipe, "components", None) or {})]
    if denoisers and all(getattr(pipe, k, None) is None for k in denoisers):
        raise SteerError(f"steer.wrap: {name}.{denoisers[0]} is None, so it cannot denoise; load the pipeline with "
                         f"its {denoisers[0]} (do not pass {denoisers[0]}=None to from_pretrained)")
    params = inspect.signature(pipe.__call__).parameters
    if "callback_on_step_end" not in params or "latents" not in getattr(pipe, "_callback_tensor_inputs", ()):
        raise SteerError(f"steer.wrap: {name}.__call__ has no callback_on_step_end that sees the latents, so particles "
                         f"cannot be resampled inside it; use steer.generate (adapters: steer.pipelines.FAMILIES)")
    if "output_type" not in params or getattr(pipe, "scheduler", None) is None:
        raise SteerError(f"steer.wrap: {name} has no output_type= or no scheduler; it cannot be steered by wrap")


class Steered:
    """``pipe`` with a particle method inside its call; ``last`` holds the last call's steer outputs."""

    def __init__(self, pipe, particles, decode=None):
        self.pipe, self.particles, self.decode = pipe, particles, decode
        self.last: Optional[dict] = None
        self.__signature__ = inspect.signature(pipe.__call__)

    def __call__(self, prompt=None, *args, **kwargs):
        pipe, method = self.pipe, self.particles
        name = f"steer.wrap({method.method})"
        prompts = _prompts(prompt, name)
        taken = [k for k in wrap_output.PER_PROMPT if kwargs.get(k, 1) not in (1, None)]
        if taken:
            raise SteerError(f"{name}: {taken[0]} is the method's particle count; pass particles=/n= "
                             f"to steer.wrap and leave {taken[0]} at 1")
        steps = kwargs.get("num_inference_steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise SteerError(f"{name}: num_inference_steps must be a whole number >= 1, got {steps!r}")
        generator = kwargs.get("generator")
        if isinstance(generator, (list, tuple)):
            raise SteerError(f"{name}: pass one torch.Generator, not a list (resampling and the kernel draw from it)")
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        kind = wrap_step.chain_kind(pipe.scheduler)
        level = method.kernel_level(kind or "diffusion")
        if level is not None:
            kind = wrap_step.check_kernel_scheduler(pipe.scheduler, method.method)
            if kwargs.get("eta"):
                raise SteerError(f"{name}: the kernel's noise is steer's; pass eta= / noise_level= to steer.wrap, "
                                 f"not to the call")
        output_type = wrap_output.output_type(pipe, kwargs)
        return_dict = kwargs.pop("return_dict", True)
        user_callback = kwargs.pop("callback_on_step_end", None)
        inputs = list(dict.fromkeys(["latents", *(kwargs.pop("callback_on_step_end_tensor_inputs", None) or [])]))
        P, K = len(prompts), method.particles
        trace = Trace(num_prompts=P)
        decoder = wrap_decode.decoder_for(pipe, self.decode, **wrap_output.call_options(pipe, kwargs))
        flat_prompts = [p for p in prompts for _ in range(K)]  # prompt-major (P·K,)
        tap = wrap_step.StepTap(pipe.scheduler, kind, level, trace)
        loop = {}  # the latents the last step handed back (for pipelines whose latent output is not them)

        def on_step(pipeline, i, t, callback_kwargs):
            if i == 0:
                method.begin(flat_prompts, kind, _num_steps(pipeline), generator, trace, decoder)
            record = wrap_step.check_tap_ran(tap, i, pipeline)
            callback_kwargs["latents"] = method.step(i, callback_kwargs["latents"], record)
            if user_callback is not None:
                callback_kwargs = user_callback(pipeline, i, t, callback_kwargs)
            loop["latents"] = callback_kwargs["latents"]
            return callback_kwargs

        if isinstance(kwargs.get("negative_prompt"), str) and P > 1:  # one per prompt (Qwen-Image needs the list)
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * P
        call = dict(kwargs, generator=generator, output_type="latent", return_dict=True, callback_on_step_end=on_step,
                    callback_on_step_end_tensor_inputs=inputs)
        per_prompt = wrap_output.per_prompt_argument(pipe)
        if per_prompt is not None:
            call[per_prompt], call_prompt = K, prompt
        else:
            call_prompt = flat_prompts
            if isinstance(call.get("negative_prompt"), (list, tuple)):
                call["negative_prompt"] = [n for n in call["negative_prompt"] for _ in range(K)]
        first = next(iter(inspect.signature(pipe.__call__).parameters), None)
        if first != "prompt" and args:
            raise SteerError(f"{name}: {type(pipe).__name__}'s first argument is {first}=, not prompt=; pass the "
                             f"pipeline's other arguments by keyword")
        positional, call = ((call_prompt,), call) if first == "prompt" else ((), dict(call, prompt=call_prompt))
        with tap.installed():
            out = pipe(*positional, *args, **call)  # FLUX.2's first argument is image=: the prompt goes by keyword
        return self._finish(out, prompts, flat_prompts, trace, decoder, output_type, return_dict, loop.get("latents"))

    def _finish(self, out, prompts, flat_prompts, trace, decoder, output_type, return_dict, loop_latents):
        pipe, method = self.pipe, self.particles
        field = wrap_output.latents_field(out, isinstance(decoder, wrap_decode.VideoDecoder))
        latents = wrap_output.final_latents(pipe, out, field, loop_latents)  # (P·K, ...)
        P, K = len(prompts), method.particles
        if not torch.is_tensor(latents) or latents.shape[0] != P * K:
            shape = tuple(getattr(latents, "shape", ()))
            raise SteerError(f"steer.wrap: {type(pipe).__name__} returned {shape} latents for "
                             f"{P} prompts x {K} particles; it does not lay particles out per prompt")
        with torch.no_grad():
            with trace.timed("decode"):
                raw = decoder.raw(latents)  # (P·K, 3, H, W), a video pipeline's (P·K, 3, F, H, W)
            reward = method.reward  # images (grids of a video's frames), frames for a video reward, or latents
            scored = latents.float() if reads_latents(reward) else reward_input(decoder, reward, latents,
                                                                                 decoder.images(raw))
            rewards = score_images(reward, scored, flat_prompts, trace=trace, method=method.method)
        extra = method.finish(rewards)
        best = toolkit.best_rows(rewards, P)  # (P,)
        images = wrap_output.postprocess(pipe, raw[best.to(raw.device)], latents[best.to(latents.device)], output_type,
                                         field, decoder)
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        result = type(out)(**{**fields, **images})
        self.last = dict(steer_trace=trace.stop_clock(), rewards=rewards[best], candidate_rewards=rewards.reshape(P, K),
                         steer_latents=latents[best.to(latents.device)], **extra)
        if not return_dict:
            return result.to_tuple()
        for k, v in self.last.items():
            setattr(result, k, v)
        return result


def _prompts(prompt, name: str) -> list[str]:
    if prompt is None:
        raise SteerError(f"{name}: pass prompt= as text (rewards read the prompt); prompt_embeds alone are not enough")
    try:
        return toolkit.prompt_list(name, prompt)
    except ValueError as e:
        raise SteerError(str(e)) from None


def _num_steps(pipe) -> int:
    """The number of denoising steps of this call (img2img: after ``strength``)."""
    n = getattr(pipe, "_num_timesteps", None)
    return int(n) if n else len(pipe.scheduler.timesteps)
