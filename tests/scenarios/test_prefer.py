"""Preference tuning (DPO): pairs made from stories and read from TRL's JSONL format, and `prefer` end to end on the
one training path for both model types (registered as <name>-pref, TRL's metrics logged, resumable)."""

import json
import math

import pytest

from jobs.data import conversations as convs, preference_data
from jobs.errors import InputError

def made_up_stories(n: int = 80, friend_named: bool = True) -> list[str]:
    """n stories with a named animal, another character (named, or just "the girl"), and things of their own
    (made-up words, so that no word but the common ones is in 5% of the stories, which the pair maker needs to ask
    for a story's words)."""
    import itertools
    import random

    rng = random.Random(0)
    syllables = ["ba", "ko", "mi", "tu", "re", "sa", "lo", "pe", "ni", "da"]
    words = ["".join(parts) for parts in itertools.product(syllables, repeat=4)]
    rng.shuffle(words)
    names, animals = ["Max", "Lily", "Tom", "Mia", "Ben", "Ann", "Sam", "Zoe"], ["dog", "cat", "bird", "frog"]
    stories = []
    for i in range(n):
        a, b, c, d = words[4 * i: 4 * i + 4]
        name, other = rng.sample(names, 2)
        girl = f"a girl called {other}" if friend_named else "a girl"
        other = other if friend_named else "The girl"
        stories.append(f"Once upon a time, there was a {rng.choice(animals)} named {name}. {name} lived with {girl}. "
                       f"One day they found a {a} near the {b}. {other} used the {a} to make a {c} and a {d}. "
                       f"At the end of the day {name} and {other} were happy.")
    return stories


STORIES = made_up_stories()


def test_pairs_from_stories_ask_for_the_storys_words_and_the_right_name():
    pairs = preference_data.pairs_from_stories(STORIES, seed=1)
    assert pairs == preference_data.pairs_from_stories(STORIES, seed=1), "deterministic from the seed"
    words = [p for p in pairs if p.kind == "uses_words"]
    names = [p for p in pairs if p.kind == "name"]
    assert words and names
    for pair in words:
        asked = pair.prompt[0]["content"].removeprefix("Write a story that uses the words ").rstrip(".")
        asked = asked.replace(" and ", ", ").split(", ")
        assert all(w in pair.chosen.lower() for w in asked) and not any(w in pair.rejected.lower() for w in asked)
    for pair in names:
        assert pair.prompt[1]["role"] == "assistant" and pair.prompt[-1]["content"].startswith("What was the")
        right, wrong = pair.chosen.split()[-1].rstrip("."), pair.rejected.split()[-1].rstrip(".")
        assert right != wrong and right in pair.prompt[1]["content"] and wrong in pair.prompt[1]["content"]


def test_a_story_naming_nobody_else_is_asked_against_the_usual_name_and_a_story_can_ask_for_more_words():
    """The wrong name, where the story names nobody else, is the one most often given to that kind of character in the
    stories (what a model that did not read the story would say); no answer is asked more than
    NAME_PAIRS_PER_ANSWER times; words_per_story asks for other words of the same story."""
    import re
    from collections import Counter

    stories = made_up_stories(friend_named=False)
    given = Counter(re.search(r"a (\w+) named (\w+)", story).groups() for story in stories)
    names = [p for p in preference_data.pairs_from_stories(stories, seed=1) if p.kind == "name"]
    asked = Counter()
    for pair in names:
        animal = re.search(r"What was the (\w+)'s name", pair.prompt[-1]["content"]).group(1)
        right, wrong = convs.told_name(pair.chosen), convs.told_name(pair.rejected)
        most = max(given[a, n] for a, n in given if a == animal and n != right)
        assert right != wrong and given[animal, wrong] == most and wrong not in pair.prompt[1]["content"]
        asked[animal, right] += 1
    assert set(asked) == set(given), "every answer is asked"
    assert max(asked.values()) == preference_data.NAME_PAIRS_PER_ANSWER < max(given.values())

    once = [p for p in preference_data.pairs_from_stories(STORIES, seed=1) if p.kind == "uses_words"]
    thrice = [p for p in preference_data.pairs_from_stories(STORIES, seed=1, words_per_story=3)
              if p.kind == "uses_words"]
    assert len(once) < len(thrice) <= 3 * len(once)
    requests = {}
    for pair in thrice:
        asked = frozenset(convs.asked_words(pair.prompt[0]["content"]))
        assert all(w in pair.chosen for w in asked) and not any(w in pair.rejected for w in asked)
        requests.setdefault(pair.chosen, []).append(asked)
    assert all(len(set(asked)) == len(asked) for asked in requests.values()), "a story asks for other words each time"
    assert max(len(asked) for asked in requests.values()) > 1


def test_name_repeats_trains_on_each_name_question_that_many_times(tmp_path):
    from collections import Counter

    from conftest import tiny
    from jobs.config import validate_config

    stories = tmp_path / "stories.txt"
    stories.write_text("\n<|endoftext|>\n".join(made_up_stories(100)) + "\n")
    values = tiny(tmp_path).to_dict()
    values["data"]["train_files"] = [str(stories)]
    values |= {"experiment_name": "tiny_pref", "model": {}, "preference": {"base": "x", "val_pairs": 6}}
    once, validation = preference_data.load_pairs(validate_config(values))
    values["preference"]["name_repeats"] = 3
    thrice, validation_again = preference_data.load_pairs(validate_config(values))
    kinds, kinds_thrice = Counter(p.kind for p in once), Counter(p.kind for p in thrice)
    assert kinds["name"] > 0 and kinds_thrice == kinds + Counter(name=2 * kinds["name"])
    assert validation == validation_again, "validation pairs are not repeated"


def test_the_models_own_greedy_reply_is_rejected_where_it_gets_the_request_wrong(tmp_path, tokenizer_folder,
                                                                                 monkeypatch):
    """preference.rejected: greedy. Each rejected reply that changes is the model's greedy reply, generated here again
    on its own (model_zoo.generation, one prompt at a time); a reply that is right keeps the pair's rejected one;
    pairs from files are never touched."""
    from conftest import make_checkpoint
    from jobs.data import chat_template
    from jobs.models import load_model
    from jobs.serving import engine
    from model_zoo.generation import generate_tokens

    loaded = load_model(str(make_checkpoint(tmp_path / "chat", tokenizer_folder, max_seq_len=256)), "cpu")
    tokenizer, stop = loaded.tokenizer, frozenset(loaded.stop_ids)
    file_pair = preference_data.Pair([{"role": "user", "content": "Say hi."}], "Hi!", "No.", "file")
    made = preference_data.pairs_from_stories(STORIES, seed=1)
    pairs = [p for p in made if p.kind == "uses_words"][:4] + [p for p in made if p.kind == "name"][:4] + [file_pair]
    assert [p.kind for p in pairs] == ["uses_words"] * 4 + ["name"] * 4 + ["file"]
    got, changed = preference_data.with_own_misses(pairs, loaded.model, tokenizer, stop)
    assert got[-1] == file_pair and len(got) == len(pairs)
    assert 0 < changed == sum(new.rejected != old.rejected for new, old in zip(got, pairs))
    for new, old in zip(got[:-1], pairs):
        prompt = chat_template.render(tokenizer, old.prompt, add_generation_prompt=True)[0]
        assert len(prompt) <= loaded.config.max_seq_len
        room = loaded.config.max_seq_len - len(prompt) + 1  # the engine stops where the context is full
        alone = list(generate_tokens(loaded.model, prompt, min(preference_data.GREEDY_REPLY_TOKENS, room),
                                     temperature=0.0, top_k=None, stop_ids=stop))
        reply = tokenizer.decode([t for t in alone if t not in stop]).strip()
        assert (new.prompt, new.chosen, new.kind) == (old.prompt, old.chosen, old.kind)
        assert new.rejected in (reply, old.rejected)
        if new.rejected != old.rejected:
            assert new.rejected == reply

    def right_replies(model, prompts, max_tokens, stop_ids):  # a model that always does what it is asked
        return [tokenizer.encode(p.chosen) for p in pairs if p.kind != "file"]

    monkeypatch.setattr(engine, "greedy_replies", right_replies)
    assert preference_data.with_own_misses(pairs, loaded.model, tokenizer, stop) == (pairs, 0)


def test_trl_pairs_are_read_in_both_forms_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
             {"prompt": [{"role": "user", "content": "Name the dog."}],
              "chosen": [{"role": "assistant", "content": "Max."}], "rejected": [{"role": "assistant", "content": "Tom."}]},
             {"prompt": "x", "chosen": "y"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(InputError, match=r"pairs.jsonl:3: each line is an object with \"prompt\", \"chosen\""):
        preference_data.read_pairs(path)
    pairs, skipped = preference_data.read_pairs(path, skip_bad=True)
    assert skipped == 1 and [(p.prompt[-1]["content"], p.chosen, p.rejected) for p in pairs] == [
        ("Say hi.", "Hi!", "No."), ("Name the dog.", "Max.", "Tom.")]
    path.write_text(json.dumps({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}))
    with pytest.raises(InputError, match="must end with a user"):
        preference_data.read_pairs(path)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_prefer_tunes_a_chat_model_registers_it_and_resumes(tmp_path, store, model_type):
    import mlflow

    from conftest import signal_during_step, tiny
    from jobs.config import validate_config
    from jobs.finetune import run_finetuning
    from jobs.prefer import run_preference_tuning
    from jobs.training.trainer import run_training

    run_training(tiny(tmp_path / "base", model={"max_seq_len": 256}, max_steps=6))
    chat = tiny(tmp_path / "chat", max_steps=6).to_dict() | {
        "experiment_name": "tiny_chat", "model": {}, "chat": {"base": "models:/tiny_torch@champion", "val_conversations": 10}}
    run_finetuning(validate_config(chat))
    stories = tmp_path / "stories.txt"
    stories.write_text("\n<|endoftext|>\n".join(made_up_stories(300)) + "\n")
    values = tiny(tmp_path / "pref", model_type, max_steps=6, eval_every=3, checkpoint_every=3, batch_size=2).to_dict()
    values["data"]["train_files"] = [str(stories)]
    values |= {"experiment_name": "tiny_pref", "model": {},
               "preference": {"base": "models:/tiny_torch-chat@champion", "beta": 0.5, "sft": 0.1, "val_pairs": 6}}
    cfg = validate_config(values)
    first = run_preference_tuning(cfg, step_hook=signal_during_step(4))
    assert first.stopped_by == "SIGTERM"
    result = run_preference_tuning(cfg, resume=True)
    assert result.steps == 6 and result.run_id == first.run_id and math.isfinite(result.best_val_loss)
    client = mlflow.tracking.MlflowClient()
    version = client.get_model_version_by_alias("tiny_torch-pref", "champion")
    run = client.get_run(result.run_id)
    assert version.run_id == result.run_id and run.data.params["base_model"] == "models:/tiny_torch-chat@champion"
    assert int(run.data.params["train_pairs"]) > 0
    metrics = run.data.metrics
    for key in ("val/rewards/chosen", "val/rewards/rejected", "val/rewards/margins", "val/rewards/accuracies",
                "val/logps/chosen"):
        assert math.isfinite(metrics[key]), key
    assert metrics["val/rewards/margins"] == pytest.approx(metrics["val/rewards/chosen"] - metrics["val/rewards/rejected"])
    assert "val/perplexity" not in metrics, "e^loss means nothing for DPO's loss"
    # the loss starts at log 2: the policy starts as the reference (h = 0), plus the SFT term on the chosen replies
    first_loss = client.get_metric_history(result.run_id, "train/loss")[0].value
    assert first_loss > math.log(2)
