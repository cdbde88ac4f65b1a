"""HPSv3's scoring prompt (``hpsv3/dataset/data_collator_qwen.py`` + Qwen2-VL's chat template with
``add_generation_prompt``): system "You are a helpful assistant.", one user turn = the image, then
``INSTRUCTION`` with the caption and the reward suffix. See ``steer.rewards.hpsv3``."""
from __future__ import annotations

REWARD_TOKEN = "<|Reward|>"
IMAGE_TOKEN = "<|image_pad|>"

INSTRUCTION = "\n".join((
    '',
    'You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. ',
    '',
    '**Visual Quality:**  ',
    'Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:',
    '- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.',
    '- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.',
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).',
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.',
    '- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. ',
    '',
    '**Text Alignment:**  ',
    'Assess how well the image matches the textual prompt across the following sub-dimensions:',
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.',
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.',
    '- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.',
    '- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.',
    '- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.',
    'Textual prompt - {text_prompt}',
    '',
    '',
    '',
))
PROMPT_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
# Qwen2-VL's chat template rendered for [user: image, text] with add_generation_prompt=True.
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>{image}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")


def user_text(prompt: str) -> str:
    """The text part of the user turn for one caption (the original's instruction + reward suffix)."""
    return INSTRUCTION.format(text_prompt=prompt) + PROMPT_SUFFIX


def chat_text(prompt: str, n_image_tokens: int = 1) -> str:
    """The full scoring prompt; ``n_image_tokens`` copies of ``<|image_pad|>`` (the processor's expansion)."""
    return CHAT.format(image=IMAGE_TOKEN * n_image_tokens, text=user_text(prompt))
