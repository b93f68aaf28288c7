import pytest

from llmlab.cli import main
from llmlab.errors import LlmlabError
from llmlab.plan.compute import (
    CHINCHILLA_FITS,
    gpu_days,
    pf_days,
    tokens_for_budget,
    training_flops,
    twenty_tokens_per_parameter,
)


def test_gpt3_175b_on_300b_tokens():
    flops = training_flops(174.6e9, 300e9)  # the GPT-3 paper counts 174.6B parameters
    assert f"{flops:.2e}" == "3.14e+23"
    assert pf_days(flops) == pytest.approx(3640, rel=0.005)


def test_t5_3b_counts_three_flops_per_parameter_per_token():
    assert pf_days(training_flops(3e9, 1e12, flops_per_param_token=3)) == pytest.approx(104, rel=0.01)


def test_chinchilla_budget_by_the_twenty_tokens_rule():
    params, tokens = twenty_tokens_per_parameter(5.76e23)
    assert round(params / 1e9) == 69 and round(tokens / 1e12, 1) == 1.4  # "70B on 1.4T tokens"


def test_eight_v100s_for_a_day_is_one_petaflop_day():
    one_pf_day = 8.64e19
    assert gpu_days(one_pf_day, "V100", "fp16") == pytest.approx(8.0)
    assert gpu_days(one_pf_day, "A100", "bf16", mfu=0.5) == pytest.approx(1e15 / 156e12)


def test_tokens_for_budget_inverts_training_flops():
    assert tokens_for_budget(training_flops(7e9, 2e12), 7e9) == pytest.approx(2e12)


@pytest.mark.parametrize("fit", list(CHINCHILLA_FITS))
def test_chinchilla_optimum_minimises_the_loss_along_the_budget(fit):
    model = CHINCHILLA_FITS[fit]
    budget = 5.76e23
    params, tokens = model.optimal(budget)
    assert 6 * params * tokens == pytest.approx(budget)
    best = model.loss(params, tokens)
    for factor in (0.5, 0.8, 1.25, 2.0):  # any other split of the same budget is worse
        assert model.loss(params * factor, budget / (6 * params * factor)) > best


def test_the_replications_fit_puts_the_gopher_budget_at_chinchillas_size():
    params, tokens = CHINCHILLA_FITS["besiroglu2024"].optimal(5.76e23)
    assert params == pytest.approx(70e9, rel=0.05) and tokens == pytest.approx(1.4e12, rel=0.06)


def test_original_fit_constants_predict_chinchillas_loss():
    assert CHINCHILLA_FITS["hoffmann2022"].loss(70e9, 1.4e12) == pytest.approx(1.937, abs=0.002)


def test_unknown_gpu_and_bad_utilisation_are_refused():
    with pytest.raises(LlmlabError, match="unknown GPU"):
        gpu_days(1e20, "TPU")
    with pytest.raises(LlmlabError, match="utilisation"):
        gpu_days(1e20, "H100", mfu=1.5)


def test_cli_compute(capsys):
    assert (
        main(
            [
                "plan",
                "compute",
                "--params",
                "174.6e9",
                "--tokens",
                "300e9",
                "--gpu",
                "V100",
                "--dtype",
                "fp16",
                "--gpus",
                "1024",
                "--mfu",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3.14e+23" in out and "3,637 petaflop/s-days" in out


# Hoffmann et al. (2022), Table 3 (Approach 1): parameters, FLOPs, tokens.
CHINCHILLA_TABLE_3 = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


# The Gopher-budget row (67B, 5.76e23, 1.5T) is left out: 6 x 67B x 1.5T = 6.0e23, so that row's
# tokens are not 6ND-consistent at the table's rounding.
@pytest.mark.parametrize("params,flops,tokens", [row for row in CHINCHILLA_TABLE_3 if row[0] != 67e9])
def test_chinchilla_table_3_is_6nd_within_its_rounding(params, flops, tokens):
    assert training_flops(params, tokens) == pytest.approx(flops, rel=0.015)


@pytest.mark.parametrize("params,flops,tokens", CHINCHILLA_TABLE_3[:2])
def test_twenty_tokens_rule_reproduces_the_rows_at_twenty_tokens(params, flops, tokens):
    rule_params, rule_tokens = twenty_tokens_per_parameter(flops)
    assert rule_params == pytest.approx(params, rel=0.01) and rule_tokens == pytest.approx(tokens, rel=0.01)


def test_chinchilla_plot_is_written(tmp_path, capsys):
    out = tmp_path / "chinchilla.png"
    assert main(["plan", "compute", "--budget-flops", "5.76e23", "--chinchilla", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--params", "1e9", "--tokens", "1e10", "--gpus", "0"], "--gpus must be positive"),
        (["--budget-flops", "1e20", "--params", "0"], "--params must be positive"),
        (["--params", "-1", "--tokens", "5"], "--params must be positive"),
        ([], "no budget given"),
    ],
)
def test_cli_compute_bad_input_is_one_line(capsys, args, fragment):
    assert main(["plan", "compute", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
