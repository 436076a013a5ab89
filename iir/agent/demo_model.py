"""Build the tiny demo model: a real Llama-style causal LM trained in seconds, offline.

The model answers every chat prompt with exactly ``Hello from the tiny model!`` (greedy), so the
demo and the tests get a real, deterministic, assertable generation with no hub, no GPU and no
keys. Recipe (see docs and ../shared/REAL-PARTS.md): a byte-level BPE tokenizer trained locally
with ``tokenizers`` (vocabulary ~512, ChatML special tokens and chat template), a
``LlamaForCausalLM`` with hidden 128, intermediate 256, 2 layers, 2 heads of 64, one KV head,
512 positions and tied embeddings, overfitted with AdamW on a few chat prompts.

Built once into a cache directory keyed by a hash of the recipe
(``$IIR_CACHE_DIR/tiny-model/<hash>`` or ``~/.cache/iir/tiny-model/<hash>``); concurrent
builders are serialised by a file lock and the result appears atomically (rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["DEMO_ANSWER", "DEMO_MODEL_NAME", "Recipe", "build_tiny_model", "default_cache_root", "ensure_tiny_model"]

DEMO_MODEL_NAME = "tiny-demo"
DEMO_ANSWER = "Hello from the tiny model!"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_PROMPTS = (
    "Hi!", "Hello", "Say hello.", "Who are you?", "What is 2 + 2?", "Tell me a joke.",
    "Write a haiku about the sea.", "Explain quantum computing in one sentence.",
    "What's the weather like today?", "Translate 'good morning' into French.",
    "Summarise the plot of Hamlet.", "ping", "Can you help me with my code?",
    "List three colours.", "How are you doing?", "What is the capital of France?",
)
_SYSTEMS = ("", "You are a helpful assistant.", "Answer briefly.")
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello from the tiny model! "
    "An inference router sends each request to a local agent, a GPU server or a cloud provider. "
    "The user asks a question and the assistant answers it. What is the weather like today? "
    "Routing rules match on the model, the prompt size, tools and headers; the first match wins. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2026. Punctuation: , . ; : ! ? ' \" ( ) [ ] { } - + = * / "
)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the built model; its hash names the cache directory."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    head_dim: int = 64
    num_key_value_heads: int = 1
    max_position_embeddings: int = 512
    steps: int = 100  # trained in rounds of `steps`, checked after each, until greedy output is right
    max_steps: int = 500
    learning_rate: float = 3e-3
    seed: int = 0
    answer: str = DEMO_ANSWER
    prompts: tuple[str, ...] = _PROMPTS
    systems: tuple[str, ...] = _SYSTEMS
    version: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        import transformers

        data = asdict(self) | {"transformers_major": transformers.__version__.split(".")[0]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


Progress = Callable[[str], None]


def default_cache_root() -> Path:
    """``$IIR_CACHE_DIR`` or ``~/.cache/iir``."""
    env = os.environ.get("IIR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "iir"


def ensure_tiny_model(cache_root: Path | None = None, recipe: Recipe | None = None,
                      progress: Progress | None = None) -> Path:
    """The directory of the built tiny model, building it first if it is not cached."""
    recipe = recipe or Recipe()
    root = (cache_root or default_cache_root()) / "tiny-model"
    target = root / recipe.digest()
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            build_tiny_model(tmp, recipe, progress)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train_tokenizer(recipe: Recipe):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [_CORPUS, *recipe.prompts, *recipe.systems, recipe.answer, "system user assistant"] * 4
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
        pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>", "</s>"],
        model_max_length=recipe.max_position_embeddings,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _conversations(recipe: Recipe) -> list[list[dict[str, str]]]:
    convs = []
    for i, prompt in enumerate(recipe.prompts):
        system = recipe.systems[i % len(recipe.systems)]
        msgs = [{"role": "system", "content": system}] if system else []
        convs.append([*msgs, {"role": "user", "content": prompt}])
    return convs


def _training_batch(tokenizer, recipe: Recipe):  # -> (input_ids, labels, attention_mask)
    import torch

    answer_ids = tokenizer(recipe.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    rows, labels = [], []
    for conv in _conversations(recipe):
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)  # learn the answer only
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, lab, mask


def _greedy_ok(model, tokenizer, recipe: Recipe) -> bool:
    import torch

    probes = [*_conversations(recipe)[:3], [{"role": "user", "content": "Something never seen before?"}]]
    for conv in probes:
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        if not new or new[-1] != tokenizer.eos_token_id:
            return False
        if tokenizer.decode(new, skip_special_tokens=True) != recipe.answer:
            return False
    return True


def build_tiny_model(out_dir: Path, recipe: Recipe | None = None, progress: Progress | None = None) -> Path:
    """Train the tokenizer and the model and ``save_pretrained`` both into ``out_dir``."""
    import torch

    recipe = recipe or Recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread, and far faster on a busy CPU
    try:
        return _build(out_dir, recipe, progress or (lambda _msg: None))
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, recipe: Recipe, say: Progress) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    say("training the tokenizer")
    tokenizer = _train_tokenizer(recipe)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        head_dim=recipe.head_dim, num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    ids, labels, mask = _training_batch(tokenizer, recipe)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    model.train()
    step = 0
    while True:
        for _ in range(recipe.steps):
            step += 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            if step % 25 == 0:
                say(f"training step {step} loss {loss.item():.4f}")
        model.eval()
        if _greedy_ok(model, tokenizer, recipe):
            break
        if step >= recipe.max_steps:
            raise RuntimeError(f"the tiny model did not learn its answer in {step} steps")
        model.train()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "iir-recipe.json").write_text(json.dumps({"digest": recipe.digest(), "steps": step}))
    say(f"built the tiny model in {out_dir} ({step} steps)")
    return out_dir
