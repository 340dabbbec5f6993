"""A deterministic synthetic conversation: facts, corrections, recall questions and filler."""

from __future__ import annotations

import random

NAMES = ["Alice", "Bruno", "Chen Wei", "Dana", "Elif", "Farid", "Greta", "Hiro"]
CITIES = ["Lisbon", "Osaka", "Toronto", "Nairobi", "Krakow", "Valparaiso", "Hanoi", "Tampere"]
JOBS = ["nurse", "structural engineer", "baker", "data analyst", "violin teacher", "pilot", "librarian"]
ALLERGIES = ["peanuts", "shellfish", "penicillin", "pollen", "cats", "sesame"]
HOBBIES = ["bouldering", "sourdough baking", "birdwatching", "chess", "kayaking", "pottery", "salsa dancing",
           "astronomy", "gardening", "trail running"]
PROJECTS = ["a grant proposal for a community garden", "a wedding speech for my sister",
            "a mobile app for tracking bus times", "a cookbook of family recipes", "a talk about solar panels"]
TOPICS = ["the history of tea", "how tides work", "why the sky is blue", "the rules of cricket", "how vaccines work",
          "the plot of Hamlet", "how bread rises", "what a black hole is", "how to fold a paper crane",
          "the life cycle of a butterfly", "how compound interest works", "why cats purr"]
FILLER = ["Thanks, that helps.", "Interesting, tell me more.", "Okay.", "Good to know!", "Can you keep going?",
          "Hmm, let me think about that.", "That makes sense to me.", "Nice."]


def conversation(turns: int, seed: int = 7) -> list[str]:
    """``turns`` user messages; the same for the same arguments."""
    rng = random.Random(seed)
    facts: dict[str, str] = {}
    out: list[str] = []
    order = 1000 + rng.randrange(9000)
    for i in range(turns):
        r = rng.random()
        if i == 0:
            facts["name"] = rng.choice(NAMES)
            out.append(f"Hi! My name is {facts['name']}. I'm new here.")
            continue
        if r < 0.12:
            kind = rng.choice(["city", "job", "allergy", "order", "hobby"])
            if kind == "city":
                facts["city"] = rng.choice(CITIES)
                out.append(f"I live in {facts['city']} these days, close to the harbour.")
            elif kind == "job":
                facts["job"] = rng.choice(JOBS)
                out.append(f"I work as a {facts['job']} and the hours are long.")
            elif kind == "allergy":
                facts["allergy"] = rng.choice(ALLERGIES)
                out.append(f"I'm allergic to {facts['allergy']}, so keep that in mind.")
            elif kind == "order":
                order += rng.randrange(1, 500)
                facts["order"] = f"A-{order}"
                out.append(f"My order number is {facts['order']} for the new headphones.")
            else:
                facts["hobby"] = rng.choice(HOBBIES)
                out.append(f"Lately I have been really into {facts['hobby']} on weekends.")
        elif r < 0.18 and facts:
            key = rng.choice(sorted(facts))
            if key == "name":
                facts["name"] = rng.choice([n for n in NAMES if n != facts["name"]])
                out.append(f"Sorry, I mistyped earlier: my name is actually {facts['name']}.")
            elif key == "city":
                facts["city"] = rng.choice([c for c in CITIES if c != facts["city"]])
                out.append(f"Correction: I moved, I live in {facts['city']} now.")
            elif key == "order":
                order += 1
                facts["order"] = f"A-{order}"
                out.append(f"Wait, my order number is actually {facts['order']}, not the one I gave you.")
            else:
                out.append(f"To correct myself about my {key}: forget what I said before, it changed.")
        elif r < 0.32 and facts:
            key = rng.choice(sorted(facts))
            q = {"name": "What is my name again?", "city": "Which city did I say I live in?",
                 "job": "What do I do for a living?", "allergy": "What am I allergic to?",
                 "order": "Can you remind me of my order number?", "hobby": "What hobby did I mention?"}[key]
            out.append(q)
        elif r < 0.40:
            out.append(f"I'm working on {rng.choice(PROJECTS)}. Can you help me outline it?")
        elif r < 0.48:
            out.append(rng.choice(["Please answer in a friendly tone.", "Please keep answers short.",
                                   "Don't use emojis.", "I prefer bullet points."]))
        elif r < 0.75:
            out.append(f"Can you explain {rng.choice(TOPICS)} in a few sentences?")
        else:
            out.append(rng.choice(FILLER))
    return out
