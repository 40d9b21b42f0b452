#!/usr/bin/python3
"""Training and evaluation data for the tiny LLaDA2.0 recipe (docs/training.md), offline only.

Writes into --out:
  corpus_train.jsonl / corpus_eval.jsonl   {"text": ...} one document per line: fortunes from
                                           the Debian `fortunes` / `fortunes-min` packages
                                           (/usr/share/games/fortunes), cleaned
  tasks_train.jsonl                        {"task", "chat", "answer"} synthetic tasks with exactly
                                           checkable answers + `fortune` chat turns (not scored)
  tasks_eval.jsonl                         held-out tasks (no instance also occurs in train): the
                                           file `dmoe eval --tasks` reads
  tokenizer_corpus.txt                     what dmoe-train-tokenizer learns merges from
  data_card.json                           counts, sources, seed

Everything is a deterministic function of --seed (Python's `random.Random`).
"""
import argparse
import json
import os
import random
import sys

FORTUNE_DIR = "/usr/share/games/fortunes"
# Files used (of the `fortunes` and `fortunes-min` packages); the rest (ascii art, jokes about
# groups of people, drugs, politics, ...) is left out to keep the demo text benign.
FORTUNE_FILES = [
    "fortunes", "wisdom", "platitudes", "literature", "science", "computers", "people",
    "cookie", "definitions", "humorists", "education", "food", "kids", "love", "pets",
    "riddles", "songs-poems", "tao", "work", "miscellaneous", "linux", "goedel", "paradoxum",
    "magic", "art", "startrek", "sports", "medicine", "knghtbrd", "debian", "linuxcookie",
]
# Topics a user can ask a fortune about (file -> word used in the question).
TOPICS = {
    "computers": "computers", "science": "science", "food": "food", "love": "love",
    "work": "work", "kids": "children", "pets": "pets", "education": "school",
    "literature": "books", "wisdom": "wisdom", "art": "art", "sports": "sports",
    "medicine": "medicine", "linux": "Linux", "people": "people", "songs-poems": "poems",
}

WORDS = (
    "apple river stone cloud green house tree bird fish blue red cat dog sun moon star "
    "bread milk road hill lake snow rain wind fire book door chair table lamp cup ship "
    "boat horse mouse king queen song light dark cold warm small big old new fast slow "
    "happy quiet loud sweet salt sand gold iron glass paper music dance paint garden "
    "window city forest ocean desert island bridge tower clock bell key ring coin map"
).split()
NAMES = ("Alice Bob Carol Dave Emma Frank Grace Henry Irene Jack Kate Liam Mia Noah Olga "
         "Paul Rosa Sam Tina Victor Wendy Yuri Zoe Hugo Nina Omar Lena Ivan").split()
CITIES = ("Paris London Rome Berlin Madrid Oslo Vienna Prague Dublin Lisbon Athens Cairo "
          "Tokyo Delhi Lima Boston Denver Sydney Toronto Chicago Seattle Warsaw").split()
JOBS = ("teacher doctor baker farmer pilot writer singer painter driver nurse chef "
        "lawyer sailor tailor").split()

TASKS = ("add", "sort", "reverse", "copy", "template")


def clean_fortune(text):
    """Removes overstriking (char BACKSPACE char), tabs and trailing spaces; None to drop."""
    out = []
    for ch in text:
        if ch == "\b":
            if out:
                out.pop()
            continue
        out.append(ch)
    text = "".join(out).replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")
    if not text or any(ord(c) > 126 or (ord(c) < 32 and c != "\n") for c in text):
        return None
    if len(text) < 20 or len(text) > 400:
        return None
    return text


def load_fortunes():
    docs = []
    for name in FORTUNE_FILES:
        path = os.path.join(FORTUNE_DIR, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="latin-1") as f:
            raw = f.read()
        for chunk in raw.split("\n%\n"):
            text = clean_fortune(chunk.strip("%\n"))
            if text is not None:
                docs.append((name, text))
    return docs


def task_add(rng):
    a = rng.randint(10, 99)
    b = rng.randint(10, 99)
    q = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}."])
    return q.format(a=a, b=b), str(a + b), (a, b)


def task_sort(rng):
    xs = [rng.randint(0, 99) for _ in range(rng.randint(3, 5))]
    q = rng.choice(["Sort these numbers: {}", "Sort in ascending order: {}"])
    return q.format(" ".join(map(str, xs))), " ".join(map(str, sorted(xs))), tuple(xs)


# Word lists go one per line, in the question and in the answer: a byte-level BPE gives
# " star" (after a space) and "star" (at the start of the answer) different ids, and a
# space-separated answer would make a tiny model learn that mapping before it can copy.
def task_reverse(rng):
    ws = rng.sample(WORDS, rng.randint(3, 5))
    q = rng.choice(["Reverse the list:\n{}", "Write these words backwards:\n{}"])
    return q.format("\n".join(ws)), "\n".join(reversed(ws)), tuple(ws)


def task_copy(rng):
    ws = rng.sample(WORDS, rng.randint(3, 6))
    q = rng.choice(["Repeat after me:\n{}", "Copy this list:\n{}"])
    return q.format("\n".join(ws)), "\n".join(ws), tuple(ws)


def task_template(rng):
    name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
    age = rng.randint(18, 90)
    q = rng.choice([
        "Fill in the template \"NAME is a AGE year old JOB from CITY.\" with "
        "name={n}, age={a}, job={j}, city={c}.",
        "Write \"NAME is a AGE year old JOB from CITY.\" for name={n}, age={a}, job={j}, "
        "city={c}.",
    ])
    return (q.format(n=name, a=age, j=job, c=city), f"{name} is a {age} year old {job} from {city}.",
            (name, age, job, city))


TASK_FNS = {"add": task_add, "sort": task_sort, "reverse": task_reverse, "copy": task_copy,
            "template": task_template}


def fortune_turn(rng, docs_by_file, all_docs):
    """A chat turn asking for a fortune (gives the demo readable chat answers; not scored)."""
    short = [d for d in all_docs if len(d) <= 240]
    if rng.random() < 0.5:
        q = rng.choice(["Tell me a fortune.", "Say something wise.", "Give me a quote.",
                        "Tell me something interesting.", "What is a good saying?"])
        return q, rng.choice(short)
    topic_file = rng.choice(sorted(TOPICS))
    pool = [d for d in docs_by_file.get(topic_file, []) if len(d) <= 240] or short
    q = rng.choice(["Tell me something about {}.", "Say something about {}.",
                    "What do you think about {}?"]).format(TOPICS[topic_file])
    return q, rng.choice(pool)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-task", type=int, default=20000)
    ap.add_argument("--eval-per-task", type=int, default=100)
    ap.add_argument("--fortune-turns", type=int, default=8000)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)

    fortunes = load_fortunes()
    if len(fortunes) < 1000:
        sys.exit(f"make_data: only {len(fortunes)} fortunes under {FORTUNE_DIR}; "
                 "install them with `apt-get install -y fortunes fortunes-min`")
    # Deduplicate, then a fixed shuffle and a 2% held-out split.
    seen, unique = set(), []
    for name, text in fortunes:
        if text not in seen:
            seen.add(text)
            unique.append((name, text))
    rng.shuffle(unique)
    n_eval = max(50, len(unique) // 50)
    corpus_eval, corpus_train = unique[:n_eval], unique[n_eval:]
    with open(os.path.join(args.out, "corpus_train.jsonl"), "w") as f:
        for name, text in corpus_train:
            f.write(json.dumps({"source": name, "text": text}) + "\n")
    with open(os.path.join(args.out, "corpus_eval.jsonl"), "w") as f:
        for name, text in corpus_eval:
            f.write(json.dumps({"source": name, "text": text}) + "\n")

    # Held-out eval instances first; training samples never repeat an eval instance (the same
    # operands / list / words / fields), whatever the wording of the question.
    eval_rows, eval_keys = [], set()
    for task in TASKS:
        n = 0
        while n < args.eval_per_task:
            q, a, key = TASK_FNS[task](rng)
            if (task, key) in eval_keys:
                continue
            eval_keys.add((task, key))
            eval_rows.append({"task": task, "chat": q, "answer": a})
            n += 1
    train_rows = []
    for task in TASKS:
        n = 0
        while n < args.train_per_task:
            q, a, key = TASK_FNS[task](rng)
            if (task, key) in eval_keys:
                continue
            train_rows.append({"task": task, "chat": q, "answer": a})
            n += 1
    docs_by_file = {}
    for name, text in corpus_train:
        docs_by_file.setdefault(name, []).append(text)
    train_docs = [t for _, t in corpus_train]
    for _ in range(args.fortune_turns):
        q, a = fortune_turn(rng, docs_by_file, train_docs)
        train_rows.append({"task": "fortune", "chat": q, "answer": a})
    rng.shuffle(train_rows)
    with open(os.path.join(args.out, "tasks_train.jsonl"), "w") as f:
        for r in train_rows:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(args.out, "tasks_eval.jsonl"), "w") as f:
        for r in eval_rows:
            f.write(json.dumps(r) + "\n")

    # Tokenizer corpus: the fortunes plus a slice of the chat tasks as the chat template
    # splits them (special tokens cut the text into SYSTEM / "detailed thinking off" / HUMAN /
    # question / ASSISTANT / answer pieces), so the merges cover the template and task words.
    with open(os.path.join(args.out, "tokenizer_corpus.txt"), "w") as f:
        for _, text in corpus_train:
            f.write(text + "\n\n")
        for r in train_rows[:5000]:
            f.write(f"SYSTEM\ndetailed thinking off\nHUMAN\n{r['chat']}\nASSISTANT\n{r['answer']}\n\n")

    card = {
        "seed": args.seed,
        "sources": f"{FORTUNE_DIR}/{{{','.join(FORTUNE_FILES)}}} (Debian packages fortunes, "
                   "fortunes-min); synthetic tasks generated by tools/train/make_data.py",
        "corpus_train_docs": len(corpus_train),
        "corpus_train_chars": sum(len(t) for _, t in corpus_train),
        "corpus_eval_docs": len(corpus_eval),
        "tasks_train": {t: sum(r["task"] == t for r in train_rows)
                        for t in TASKS + ("fortune",)},
        "tasks_eval": {t: sum(r["task"] == t for r in eval_rows) for t in TASKS},
    }
    with open(os.path.join(args.out, "data_card.json"), "w") as f:
        json.dump(card, f, indent=2)
    print(json.dumps(card))


if __name__ == "__main__":
    main()
