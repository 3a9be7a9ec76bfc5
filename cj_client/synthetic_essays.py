"""Synthetic essays with a known vocabulary spread, for tests, benchmarks and accuracy tables.

Each essay argues one of a few school-policy questions in paragraphs of template sentences, filled
from a word bank. Its vocabulary size is drawn log-normally, so the mock judge's true score
(`ln(1 + distinct words) / T`, docs/cj.md) is normal with an SD of about `10 * VOCABULARY_LOG_SD`
logits at T = 0.1: 1.8 by default, a realistic CJ spread. Deterministic for a seed (random.Random,
never `hash()`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from cj_client.models import EssayInput

VOCABULARY_LOG_MEAN = math.log(150.0)
VOCABULARY_LOG_SD = 0.18
WORDS_PER_DISTINCT = 2.2


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


TOPICS = (
    ("school should start later", "start"),
    ("homework should be limited", "homework"),
    ("uniforms should be optional", "uniform"),
    ("phones should be banned in class", "phone"),
    ("every pupil should learn to cook", "cooking"),
)
NOUNS = _words("""
pupil teacher parent school lesson morning evening sleep rest health mood focus memory grade test
exam class timetable bus route sport practice club library canteen meal breakfast lunch dinner
family home street city town village council budget money cost fee benefit risk problem solution
evidence study survey report expert doctor scientist researcher nurse coach friend neighbour
community society culture habit routine rule policy law right duty choice freedom safety danger
stress anxiety pressure confidence motivation effort progress success failure future career job
skill talent knowledge wisdom idea argument reason opinion belief value purpose goal dream plan
method approach system structure pattern trend change growth decline balance fairness justice
equality difference advantage drawback outcome result effect impact cause factor element aspect
feature detail example instance case situation context background history tradition trust respect
attention concentration discipline behaviour attendance punctuality uniform identity expression
creativity curiosity independence responsibility maturity adolescence childhood generation youth
adult society economy industry technology device screen phone tablet internet network message
distraction recipe kitchen ingredient nutrition diet vegetable fruit garden climate environment
energy transport traffic noise weather season winter summer holiday weekend afternoon deadline
""")
VERBS = _words("""
improve reduce increase protect support help encourage prevent allow require consider suggest
argue claim prove show reveal explain describe compare measure test change replace remove add
build create design develop organise manage plan prepare arrange schedule adjust adapt accept
reject question challenge doubt believe trust respect value notice observe recognise understand
learn teach study practise train rest recover sleep wake concentrate remember forget achieve
succeed struggle fail suffer enjoy share discuss debate decide choose prefer deserve benefit
harm damage threaten weaken strengthen boost raise lower limit restrict ban permit enforce ignore
""")
ADJECTIVES = _words("""
tired alert healthy rested calm anxious stressed confident motivated curious independent
responsible mature young early late long short busy quiet noisy safe dangerous fair unfair equal
important essential necessary useful helpful harmful costly cheap expensive simple complex clear
obvious subtle strong weak modest significant considerable remarkable dramatic gradual steady
sudden practical realistic logical reasonable sensible persuasive convincing doubtful uncertain
reliable accurate recent modern traditional local national global social personal academic
physical mental emotional natural biological chronic severe mild positive negative flexible rigid
""")
ADVERBS = _words("""
clearly strongly certainly probably perhaps surely simply really truly deeply widely rarely often
usually always never sometimes gradually steadily quickly slowly carefully fairly greatly mostly
nearly hardly largely partly mainly especially particularly consequently therefore however
moreover furthermore nevertheless meanwhile indeed similarly overall finally
""")
FUNCTION_WORDS = _words("""
the a an of to and in on for with that this it is are be can should would must will we they
our their because so but when if more than not all many most some every
""")


def generate_essays(count: int, *, seed: int = 0, prefix: str = "essay") -> list[EssayInput]:
    """`count` essays with ids `<prefix>-0000`, ..., their vocabularies of varied size."""
    rng = random.Random(seed)
    width = max(4, len(str(count - 1)))
    return [_essay(f"{prefix}-{i:0{width}d}", rng) for i in range(count)]


def write_jsonl(essays: Sequence[EssayInput], path: Path) -> Path:
    """Write essays as JSONL `{"id", "text"}` (the format `cj assess` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"id": e.id, "text": e.text}) for e in essays)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _essay(essay_id: str, rng: random.Random) -> EssayInput:
    claim, topic = rng.choice(TOPICS)
    bank = {"noun": NOUNS, "verb": VERBS, "adjective": ADJECTIVES, "adverb": ADVERBS}
    target = math.exp(rng.gauss(VOCABULARY_LOG_MEAN, VOCABULARY_LOG_SD))
    content = max(8, round(target) - len(FUNCTION_WORDS))
    total = sum(len(words) for words in bank.values())
    chosen = {
        kind: rng.sample(words, min(len(words), max(2, round(content * len(words) / total))))
        for kind, words in bank.items()
    }
    # Every chosen word is used once before any is repeated, so the vocabulary is what was drawn.
    queues = {kind: rng.sample(words, len(words)) for kind, words in chosen.items()}

    def word(kind: str) -> str:
        if queues[kind]:
            return queues[kind].pop()
        return rng.choice(chosen[kind])

    length = round(target * WORDS_PER_DISTINCT)
    sentences = [f"I believe that {claim}, and this essay explains why."]
    words_written = len(sentences[0].split())
    while words_written < length or any(queues.values()):
        sentence = rng.choice(_TEMPLATES).format(
            topic=topic,
            n1=word("noun"),
            n2=word("noun"),
            v=word("verb"),
            a=word("adjective"),
            d=word("adverb"),
        )
        sentences.append(sentence[0].upper() + sentence[1:])
        words_written += len(sentence.split())
    sentences.append(f"For all of these reasons, {claim}.")
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    return EssayInput(essay_id, "\n\n".join(paragraphs))


_TEMPLATES = (
    "the {a} {n1} can {v} the {n2} of every pupil.",
    "{d}, a {a} {n1} would {v} our {n2}.",
    "we should {v} the {n1} because it is {a} for the {n2}.",
    "this {topic} {n1} is {a}, so schools must {d} {v} it.",
    "when the {n1} is {a}, the {n2} will {v} {d}.",
    "many {n1} experts {d} {v} that the {n2} is {a}.",
    "if we {v} the {topic} {n1}, our {n2} will be more {a}.",
    "some argue that the {n1} is {a}, but the {n2} {d} shows more than that.",
)
