"""The captioner (image to text): vocabulary, teacher forcing, decoding, checkpoints, the CLI and the caption metrics."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from t2i_helpers.cli.commands import main
from t2i_helpers.data import load_eval_data
from t2i_helpers.data.shapes import render
from t2i_helpers.errors import T2IError, TrainingError
from t2i_helpers.evaluation.captioning import attribute_match, caption_scores
from t2i_helpers.models.captioner import Captioner, CaptionerConfig, Vocabulary, beam_search, beam_step, tokenize
from t2i_helpers.train.captioning import (captioner_train_config, export_captioner, load_captioner,
                                          load_shipped_captioner, train_captioner)
from t2i_helpers.train.shipped import shipped_dir

CAPTIONS = ["A red circle on the left.", "top-left: a big blue box", "a red square"]


def tiny_model(seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    return Captioner(Vocabulary.build(CAPTIONS), CaptionerConfig.smoke()).eval()


def test_vocabulary_round_trip_and_unknown_words():
    vocab = Vocabulary.build(CAPTIONS)
    assert vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert vocab.words[4:7] == ["a", "left", "red"]  # by frequency (3, 2, 2), ties alphabetical
    ids = vocab.encode(CAPTIONS[1], max_len=8)
    assert len(ids) == 10 and ids[0] == vocab.bos and ids.count(vocab.eos) == 1 and ids[-1] == vocab.pad
    assert vocab.decode(ids) == "top left a big blue box" == " ".join(tokenize(CAPTIONS[1]))
    unknown = vocab.encode("a green circle", max_len=4)
    assert vocab.decode(unknown) == "a <unk> circle"
    assert Vocabulary.build(CAPTIONS, min_count=2).words[4:] == ["a", "left", "red"]
    assert Vocabulary(vocab.words).encode_all(CAPTIONS, 3).shape == (3, 5)  # cut to 3 words
    with pytest.raises(T2IError, match="starts with"):
        Vocabulary(["a", "b"])


def test_teacher_forcing_loss_matches_a_hand_computation():
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = model.vocab.encode_all(CAPTIONS[:2], max_len=7)
    with torch.no_grad():
        memory, h = model.start(images)
        nll, count = 0.0, 0
        for t in range(ids.shape[1] - 1):
            logits, h = model.step(memory, h, ids[:, t])
            logp = logits.double().log_softmax(-1)
            for b in range(2):
                target = int(ids[b, t + 1])
                if target != model.vocab.pad:
                    nll -= float(logp[b, target])
                    count += 1
        assert count == len(tokenize(CAPTIONS[0])) + len(tokenize(CAPTIONS[1])) + 2  # words + <eos> each
        assert float(model.loss(images, ids)) == pytest.approx(nll / count, rel=1e-5)


def test_greedy_is_beam_search_of_width_one():
    model = tiny_model(1)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    greedy = model.greedy(images)
    assert [model.beam(image, width=1)[0] for image in images] == greedy
    assert [model.beam(image, width=1, max_len=3)[0] for image in images] == model.greedy(images, max_len=3)
    assert model.caption(images, beam=1) == [model.vocab.decode(g) for g in greedy]


# A decoder whose next-word probabilities depend only on the last word: every caption can be enumerated.
BOS, EOS, WORDS = 3, 2, (0, 1)
TABLE = {3: [0.5, 0.4, 0.1], 0: [0.4, 0.3, 0.3], 1: [0.05, 0.05, 0.9]}  # p(word 0), p(word 1), p(<eos>)


def markov(state, words):
    probs = torch.tensor([TABLE[int(w)] + [0.0] for w in words])  # 4 ids: 0, 1, eos, bos (never next)
    return probs.log(), words.clone()


def best_by_enumeration(max_len: int) -> tuple[list[int], float]:
    best = ([], -math.inf)
    for n in range(max_len + 1):
        for seq in itertools.product(WORDS, repeat=n):
            last, score = BOS, 0.0
            for w in seq:
                score += math.log(TABLE[last][w])
                last = w
            score += math.log(TABLE[last][2])
            best = max(best, (list(seq), score), key=lambda b: b[1])
    return best


def test_beam_search_finds_the_best_caption_that_greedy_misses():
    best, score = best_by_enumeration(3)
    assert best == [1] and score == pytest.approx(math.log(0.4 * 0.9))
    greedy, greedy_score = beam_search(markov, torch.tensor([BOS]), BOS, EOS, width=1, max_len=3)
    assert greedy == [0, 0, 0] and greedy_score < score  # greedy takes 0 first and never recovers
    for width in (2, 3, 50):
        seq, found = beam_search(markov, torch.tensor([BOS]), BOS, EOS, width=width, max_len=3)
        assert seq == best and found == pytest.approx(score)


def test_beam_step_keeps_the_best_extensions():
    scores = torch.tensor([-0.1, -1.0])
    log_probs = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05]]))
    new, parent, word = beam_step(scores, log_probs, width=3)
    totals = {(p, w): float(scores[p] + log_probs[p, w]) for p in range(2) for w in range(3)}
    expected = sorted(totals, key=totals.get, reverse=True)[:3]
    assert list(zip(parent.tolist(), word.tolist())) == expected
    assert new.tolist() == pytest.approx([totals[k] for k in expected])


def test_train_save_load_and_export_round_trip(tiny_train_data, tmp_path):
    image_root, ann = tiny_train_data
    config = captioner_train_config("smoke", steps=3, batch_size=8)
    result = train_captioner(image_root, ann, tmp_path / "run", config, CaptionerConfig.smoke(), verbose=False)
    assert result.step == 3 and math.isfinite(result.final_loss)
    model = load_captioner(tmp_path / "run", device="cpu")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    again = load_captioner(tmp_path / "run", device="cpu")
    assert model.caption(images) == again.caption(images)
    with pytest.raises(TrainingError, match="already holds"):
        train_captioner(image_root, ann, tmp_path / "run", config, CaptionerConfig.smoke(), verbose=False)

    export_captioner(tmp_path / "run", tmp_path / "ship", command="train-captioner --test")
    record = json.loads((tmp_path / "ship" / "captioner.json").read_text())
    assert record["command"] == "train-captioner --test" and record["vocab"] == model.vocab.words
    shipped = load_shipped_captioner(folder=tmp_path / "ship", device="cpu")
    for (name, a), b in zip(model.state_dict().items(), shipped.state_dict().values()):
        assert torch.allclose(a, b, atol=2e-3, rtol=1e-3), name  # float16 on disk
    weights = tmp_path / "ship" / "captioner.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(TrainingError, match="does not match its SHA-256"):
        load_shipped_captioner(folder=tmp_path / "ship")


needs_shipped = pytest.mark.skipif(not (shipped_dir("cpu") / "captioner.safetensors").exists(),
                                   reason="no shipped captioner yet (python -m t2i_helpers train-captioner --tier cpu --ship)")


@needs_shipped
def test_shipped_captioner_reads_real_shapes_images(tmp_path):
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes

    paths = make_shapes(tmp_path / "s", ShapesConfig(images=60, image_size=64, seed=5))
    val = load_eval_data(paths.images_dir, paths.val_json, image_size=32)
    model = load_shipped_captioner(device="cpu")
    assert (shipped_dir("cpu") / "captioner.safetensors").stat().st_size < 5 * 2**20
    result = attribute_match(model.caption(val.images), val.attributes)
    # chance for colour and shape together is about 1/18; templated captions should be read almost always
    assert result["exact_share"] > 0.7, result


@needs_shipped
def test_cli_captions_in_order_and_fails_in_one_line(tmp_path, capsys):
    files = []
    for i, (shape, color) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(render(shape, color, "large", "center", 64)).save(files[-1])
    assert main(["caption", "shipped", *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(color in line for color, line in zip(("red", "blue", "green"), lines)), lines
    assert main(["caption", "shipped:cpu", *map(str, files[::-1])]) == 0
    assert capsys.readouterr().out.splitlines() == lines[::-1]  # one line per image, in the order given
    assert main(["caption", "shipped", str(files[0]), "--beam", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    for args, name in ((["caption", "shipped", str(files[0]), str(tmp_path / "missing.png")], "missing.png"),
                       (["caption", "shipped", str(bad)], "notes.png"), (["caption", "shipped"], "no images")):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and name in captured.err


def test_cli_caption_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["caption", str(tmp_path / "nowhere"), "a.png"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bleu_and_cider_match_pycocoevalcap_called_directly():
    candidates = ["A red circle, on the left.", "a blue square"]
    references = [["a red circle on the left", "red disc at the left"], ["a big blue box", "a blue square in the middle"]]
    ours = caption_scores(candidates, references)
    gts = {0: references[0], 1: references[1]}
    res = {0: ["a red circle on the left"], 1: ["a blue square"]}  # what the Python tokenization gives
    assert ours["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert ours["n_images"] == 2
    with pytest.raises(T2IError, match="one candidate per image"):
        caption_scores([], [])


def test_attribute_match_counts_by_hand():
    truth = [{"color": "red", "shape": "circle", "size": "small", "position": "top left"},
             {"color": "blue", "shape": "square", "size": "large", "position": "center"},
             {"color": "green", "shape": "triangle", "size": "small", "position": "right"}]
    captions = ["a small red circle in the top left corner",  # all four, right
                "a big blue disc",  # shape wrong
                "something green"]  # no shape named
    result = attribute_match(captions, truth)
    assert result["named"] == {"color": 3, "shape": 2, "size": 2, "position": 1}
    assert result["right"] == {"color": 3, "shape": 1, "size": 2, "position": 1}
    assert (result["color_shape"], result["exact"], result["complete"]) == (2, 1, 1)
    assert result["per_attribute"]["shape"] == 0.5 and result["exact_share"] == pytest.approx(1 / 3)
    with pytest.raises(T2IError, match="2 captions for 3 images"):
        attribute_match(captions[:2], truth)


def test_word_dropout_only_acts_in_training():
    torch.manual_seed(0)
    model = Captioner(Vocabulary.build(CAPTIONS), CaptionerConfig(channels=(8, 16, 32), embed_dim=16, hidden=16,
                                                                  dropout=0.0, word_dropout=0.9))
    images, ids = torch.rand(3, 3, 32, 32) * 2 - 1, model.vocab.encode_all(CAPTIONS, 8)
    model.requires_grad_(False)
    model.eval()
    assert float(model.loss(images, ids)) == float(model.loss(images, ids))  # no randomness at evaluation
    model.train()
    torch.manual_seed(1)
    noisy = float(model.loss(images, ids))
    model.eval()
    assert noisy != pytest.approx(float(model.loss(images, ids)))


def test_cli_trains_a_captioner_and_captions_with_its_run_folder(tiny_train_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("T2I_TIER", "smoke")  # the smoke tier's tiny model and steps
    image_root, ann = tiny_train_data
    run = tmp_path / "run"
    assert main(["train-captioner", "--data", str(image_root), str(ann), "--out", str(run), "--steps", "2",
                 "--no-progress"]) == 0
    assert "to step 2" in capsys.readouterr().out
    image = tmp_path / "a.png"
    Image.fromarray(render("circle", "red", "large", "center", 32)).save(image)
    assert main(["caption", str(run), str(image), str(image), "--beam", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert main(["train-captioner", "--data", str(image_root), str(ann), "--out", str(run), "--steps", "2"]) == 2
    assert "already holds" in capsys.readouterr().err
