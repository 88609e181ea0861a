"""The prompt's token ids: flashrt_ros' PromptTokenizer (the `tokenizers` library on the checkpoint's
tokenizer.json) gives what LeRobot's TokenizerProcessorStep gives with a Hugging Face tokenizer made
from the same file: right padding to max_length, truncation, the same mask.

The real PaliGemma / SmolVLM2 tokenizers live on the hub; the fixtures' word-level tokenizer.json
(made with `tokenizers`, parity/make_fixture.py) stands in. What is compared is the step, not the
vocabulary.
"""
from pathlib import Path

import pytest
import torch
from lerobot.processor import TokenizerProcessorStep
from transformers import PreTrainedTokenizerFast

from flashrt_ros.models.lerobot.processing import PromptTokenizer, newline_prompt, pi05_prompt

FIXTURE = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "lerobot_pi05_tiny"
PROMPTS = [
    newline_prompt("pick up the red cube"),
    pi05_prompt("open the top_drawer\n", torch.tensor([-1.2, -1.0, -0.5, 0.0, 0.25, 0.999, 1.5]).numpy()),
    "go " * 250,                                 # longer than max_length: truncated
    "unknown words like zebra map to unk",
]


@pytest.mark.parametrize("max_length", [48, 200])
def test_prompt_tokens_and_mask_equal_lerobots_tokenizer_step(max_length):
    hf = PreTrainedTokenizerFast(tokenizer_file=str(FIXTURE / "tokenizer.json"), pad_token="<pad>",
                                 bos_token="<bos>", unk_token="<unk>")
    step = TokenizerProcessorStep(tokenizer=hf, max_length=max_length, padding_side="right",
                                  padding="max_length")
    ours = PromptTokenizer(FIXTURE / "tokenizer.json", max_length)
    for text in PROMPTS:
        ref = step._tokenize_text([text])
        ids, mask = ours(text)
        assert ids.tolist() == ref["input_ids"][0].tolist(), text
        assert mask.tolist() == ref["attention_mask"][0].bool().tolist(), text
    assert ours("go " * 250)[1].all()            # the truncated one fills every position
