"""What each trap model plants, its ground truth, and which circuit methods it should defeat and why.

Written before the methods were measured on the committed models (recorded in each card as
``trap_notes``); the measured ROC-AUCs are in the README, section "Circuit trap models".  Head names are ``layer.head``; every trap model
is a 3-layer, 8-head GPT (24 heads) on the word-level IOI task, with the base circuit 0.5 (duplicate
token) -> 1.3 (S-inhibition) -> 2.6 (name mover) unless stated otherwise.
"""

from __future__ import annotations

_CHANCE = "seeded random scores: ROC-AUC 0.5 in expectation"

NEGATIVE = {
    "mechanism": (
        "0.5 duplicate token (S2 -> S1) -> 1.3 S-inhibition (end -> S2) -> 2.6 name mover (end -> IO, writes +IO); "
        "2.2 negative name mover: at the end attends to IO and writes minus the name it attends to, so it "
        "lowers logit(IO) - logit(S) and its ablation raises the metric (Wang et al.'s negative name movers)"
    ),
    "ground_truth": (
        "{0.5, 1.3, 2.2, 2.6}: every head whose single resample ablation moves the mean logit difference by "
        ">= 30% down (circuit heads) or >= 10% up (the negative head 2.2); every other head moves it by <= 5%"
    ),
    "predictions": {
        "acdc": "finds 2.2: its effect is |m(current) - m(removed)|, the sign does not matter -> ~1.0",
        "act-patch-mean": "finds 2.2 with the default absolute=True (|effect|) -> ~1.0; absolute=False ranks it "
                          "last (its signed effect is the most negative) -> (3*20 + 0)/(4*20) = 0.75",
        "act-patch-resample": "as act-patch-mean: ~1.0 with |effect|, 0.75 signed",
        "eap": "finds 2.2 with |estimate| (a direct path to the logits, its linear estimate is accurate) -> ~1.0; "
               "signed -> 0.75",
        "eap-ig": "as eap: ~1.0 with |estimate|, 0.75 signed",
        "discrete-sae": "sign-blind and activity-based: 2.2's output changes between clean and corrupted prompts "
                        "(its attention follows the S-inhibition signal, absent in ABC prompts), so it is scored "
                        "like the other circuit heads; no specific loss from this trap",
        "random": _CHANCE,
    },
}

REDUNDANT = {
    "mechanism": (
        "0.5 duplicate token -> {1.3, 1.6} two S-inhibition heads (both end -> S2) -> 2.6 name mover; each of "
        "1.3 and 1.6 alone carries the S-inhibition signal far enough to saturate the name mover's choice, so "
        "ablating either alone changes nothing (in the full model, and with every non-circuit head ablated "
        "too: no backup head), while replacing both with another prompt's (or the corrupted prompt's) "
        "outputs misleads the name mover.  Caveat, measured: under joint *mean* ablation the model still "
        "solves the task (drop ~5%: mean outputs carry no wrong signal and the name mover falls back on the "
        "S2 token), so the pair is jointly necessary under resample and corrupted-prompt patching only"
    ),
    "ground_truth": (
        "{0.5, 1.3, 1.6, 2.6}, the union of the minimal circuits faithful under resample ablation (the "
        "acceptance ablation, and what ACDC, act-patch-resample, EAP and EAP-IG patch in): {0.5, 1.3, 2.6} and "
        "{0.5, 1.6, 2.6} each reproduce the model with everything else ablated (drop <= 10%), neither "
        "redundant head matters alone (|drop| <= 5%), and the two ablated together drop the metric by >= 30% "
        "(card: verification.traps.redundant: single_, minimal_ and joint_ drops under resample, corrupted "
        "patching and mean ablation).  Both redundant heads count as circuit heads: a method should find "
        "every head that takes part in some minimal faithful circuit"
    ),
    "predictions": {
        "acdc": "visits layer 1 from head 0 up: removes 1.3 (removing it alone changes nothing), then keeps 1.6 "
                "(now the only carrier); 1.3 gets a near-zero score and ranks among the 20 non-circuit heads "
                "-> about (3*20 + 10)/(4*20) = 0.88; its selected circuit misses 1.3",
        "act-patch-mean": "single-head ablation sees ~0 for 1.3 and 1.6 -> both rank among the non-circuit heads "
                          "-> about (2*20 + 2*10)/(4*20) = 0.75",
        "act-patch-resample": "as act-patch-mean: ~0.75",
        "eap": "the gradient at the clean point is flat along each redundant head (the OR is saturated), and "
               "0.5 acts only through them -> 1.3, 1.6 and probably 0.5 score near zero -> 0.5-0.75",
        "eap-ig": "interpolates all layer-1 heads together from corrupted to clean, so the path crosses the "
                  "region where the signal is not yet saturated -> 1.3 and 1.6 share the joint effect -> ~1.0",
        "discrete-sae": "activity-based: 1.3 and 1.6 are active (their outputs change between clean and "
                        "corrupted prompts) -> flagged like other circuit heads; no specific loss",
        "random": _CHANCE,
    },
}

BUSY = {
    "mechanism": (
        "base circuit 0.5 -> 1.3 -> 2.6, plus three busy non-circuit heads that mimic the circuit heads' "
        "attention: 0.2 (S2 -> S1, like 0.5), 1.4 (end -> S2, like 1.3), 2.3 (end -> IO, like 2.6); they "
        "copy the names they attend to, so their outputs change between clean and corrupted prompts as "
        "much as the circuit heads', but the strict term (every non-circuit head resample-ablated, output "
        "unchanged) leaves nothing downstream reading them"
    ),
    "ground_truth": (
        "{0.5, 1.3, 2.6}: single resample drops >= 30%; every other head, the busy ones included, <= 5% "
        "(alone, and the three busy heads ablated together: verification.traps.busy_joint)"
    ),
    "predictions": {
        "acdc": "causal: busy heads' ablation changes nothing -> ~1.0",
        "act-patch-mean": "causal -> ~1.0",
        "act-patch-resample": "causal -> ~1.0",
        "eap": "(z_clean - z_corrupt) is large for the busy heads but dM/dz is ~0 (nothing reads them) -> ~1.0",
        "eap-ig": "as eap -> ~1.0",
        "discrete-sae": "defeated: it scores heads by codes seen on clean prompts and never on corrupted ones, "
                        "i.e. by how their outputs change; the busy heads change like circuit heads -> each "
                        "busy head ranks with the circuit heads -> well below its ~0.86 on planted-ioi",
        "random": _CHANCE,
    },
}

SATURATED = {
    "mechanism": (
        "0.5 duplicate token -> 1.3 S-inhibition -> 2.6 name mover, where 2.6's attention from the end to IO "
        "is pushed to a logit margin of at least 15 over every other key (a hinge; softmax saturated, "
        "attention ~1.0; the card's verification.traps.attention has the margins reached), and "
        "0.5 and 1.3 act only through 2.6's query (patching them with 2.6 clamped to its clean output "
        "changes nothing); corrupting 1.3's (or 0.5's) output removes the inhibition signal and 2.6 splits "
        "its attention between IO and S, while at the clean point the gradient through the saturated "
        "softmax is ~0.  Background (traps.background, from step background_start): every other head but the "
        "two distractor heads (0.0, 1.1) attends from the end to S2 and copies it, so that replaced alone it "
        "moves the logit difference by ~2.5% of the clean one, alternately down and up (together: nothing), as "
        "real models have many heads with small real effects.  Their linear estimates are accurate (direct "
        "paths), while 0.5's and 1.3's are left with what leaks past the saturated softmax (layer norm, side "
        "paths: ~0.1-0.5% of the metric), so attribution patching ranks them under the whole background"
    ),
    "ground_truth": (
        "{0.5, 1.3, 2.6}: corrupted-patch and resample drops >= 30%; every other head <= 5% (the background "
        "heads ~2-2.5%, verification.traps.background_joint); for 0.5 and 1.3 the linear estimate "
        "(z_corrupt - z_clean) . dM/dz is <= 10% of the real corrupted-patch drop "
        "(verification.traps.linear_estimate_drop vs corrupted_patch_drop), and below every background head's on "
        ">= 95% of random 32-prompt sets (verification.traps.via_below_background)"
    ),
    "prediction_basis": (
        "The background was added after the first version of this model (no background) left eap at 0.862 +- "
        "0.164 over 3 seeds: the two via heads' near-zero scores ranked among 21 non-circuit heads whose scores "
        "were near zero too, a coin toss per prompt set.  eap's value below was measured on a trial build of "
        "this recipe (0.397, 0.397, 0.381 on seeds 0-2) before these predictions were written; the others were "
        "not measured first"
    ),
    "predictions": {
        "acdc": "ablation-based: 0.5 and 1.3 drop the metric by ~0.9, every background head by ~0.025 -> ~1.0",
        "acdc-edges": "as acdc -> ~1.0",
        "act-patch-mean": "ablation-based -> ~1.0",
        "act-patch-resample": "ablation-based -> ~1.0",
        "eap": "defeated: 0.5 and 1.3 rank under every background head, above only the two distractor heads "
               "(whose estimates are ~0) -> (21 + 2*2)/(3*21) = 0.397 on nearly every prompt set",
        "eap-edges": "defeated like eap (a via head's outgoing edges carry only the leak), less if the leak spread "
                     "over many edges adds up in its sum of |edge scores| -> 0.4-0.9",
        "eap-ig": "integrates each layer's outputs from corrupted to clean; the path crosses the unsaturated "
                  "region near the corrupted end, so 0.5 and 1.3 collect a large part of their ~0.9 drop, far "
                  "above the background's 0.025 -> ~1.0",
        "eap-ig-edges": "as eap-ig -> ~1.0",
        "atp-star": "its QK fix recomputes 2.6's attention exactly under the patch -> recovers 0.5 and 1.3 -> ~1.0",
        "subnetwork-probing": "masks act on the outputs: removing 0.5 or 1.3 breaks the task, a background head "
                              "costs 2.5% -> ~1.0",
        "activity-diff": "the background heads copy S2, which differs between clean (S) and corrupted (C) prompts, "
                         "so their outputs change like the circuit heads' (the busy trap's mechanism) -> below "
                         "1.0, 0.5-0.9",
        "discrete-sae": "activity-based: as activity-diff, lower (its features pool over positions) -> 0.3-0.8",
        "random": _CHANCE,
    },
}

CANCEL = {
    "mechanism": (
        "base circuit 0.5 -> 1.3 -> 2.6, plus 2.1, a first-name mover: at the last position it attends to the "
        "first name of the prompt (position A) and copies it, which is IO on ABBA prompts (+IO: it raises "
        "logit(IO) - logit(S) by ~cancel_shift) and S on BABA prompts (+S: it lowers it by as much); on corrupted "
        "prompts (ABC, no repeated name) it attends to S2 instead and copies C, which is neither answer.  Replaced "
        "by another prompt's, the corrupted prompt's or the mean output, 2.1 changes every prompt's logit "
        "difference by about +-cancel_shift with the sign of the prompt's order; every split alternates ABBA and "
        "BABA, so the mean over prompts, the metric the mean-based methods score, barely moves.  Training: a "
        "per-prompt squared-error term on the change, a balance term on the sum of each prompt's change and its "
        "order-swapped twin's, an attention hint on the corrupted prompts, all from step cancel_start on (the base "
        "circuit is trained first)"
    ),
    "ground_truth": (
        "{0.5, 1.3, 2.1, 2.6}: a head is in the circuit when it changes the model's output on the prompts, i.e. the "
        "mean over prompts of |per-prompt resample drop| d_i = (m_i(clean) - m_i(ablated)) / m(clean) is >= 0.3 "
        "(m the mean metric; 512 fresh prompts, seed 987654, verification.traps.per_prompt_abs_drop); every "
        "non-circuit head's is <= 0.1.  0.5, 1.3 and 2.6 also drop the mean metric by >= 30%; 2.1's drop of the "
        "mean metric is <= 0.05 in magnitude under resample, corrupted-prompt patching and mean ablation (as small "
        "as a non-circuit head may be), its per-prompt drops have the order's sign (+ ABBA, - BABA) on >= 90% of "
        "the prompts under each of the three ablations, and their mean magnitude is >= 0.3 under resample and >= 0.2 under the other two ablations "
        "(verification.traps.cancel)"
    ),
    "prediction_basis": (
        "ROC-AUC with 4 circuit heads and 20 non-circuit heads: 2.1 ranked below r of the non-circuit heads "
        "gives (3*20 + 20 - r)/80, 0.75 at the bottom, 0.875 in the middle, 1.0 above them all.  The fit "
        "split has 32 prompts, 16 of each order, so a method scoring |change of the mean metric| sees 2.1's "
        "leftover imbalance plus the noise of 16 prompts per order (about 0.3 nats on a metric of ~15-20, a "
        "drop of ~0.01-0.02), while the non-circuit heads of the sibling traps move the mean by 0.000-0.012: "
        "2.1 should land among the top few non-circuit heads rather than in the middle"
    ),
    "predictions": {
        "acdc": "defeated: visits layer 2 first; patching 2.1 from the corrupted run moves the mean metric by ~0.01-0.02 "
                "of the clean-corrupted gap, below tau = 0.02, so it is removed, with that small effect as its "
                "score -> 0.85-0.99 (most likely ~0.95), and its selected circuit misses 2.1",
        "act-patch-mean": "defeated: |m(clean) - m(2.1 mean-ablated)| is the leftover of two opposite halves -> "
                          "0.85-0.99 (most likely ~0.95)",
        "act-patch-resample": "defeated, as act-patch-mean (patched from the paired corrupted prompt: each prompt "
                              "moves by +-cancel_shift, the mean does not) -> 0.85-0.99 (most likely ~0.95)",
        "eap": "defeated: the sum over prompts of (z_clean - z_corrupt) . dM/dz adds per-prompt estimates of opposite "
               "signs (2.1 writes straight into the logits, so each is accurate and they cancel as the real "
               "effects do) -> 0.85-0.99 (most likely ~0.95)",
        "eap-ig": "defeated as eap (the integrated gradients are per prompt, summed before |.|) -> 0.85-0.99",
        "atp-star": "defeated as eap: its QK fix and GradDrop change how each prompt's effect is estimated, not "
                    "that the estimates are summed over prompts before |.| -> 0.85-0.99",
        "subnetwork-probing": "finds 2.1: the loss is a KL per prompt; masking 2.1 lowers IO's logit by ~cancel_shift "
                              "on the ABBA half (the model becomes much less confident: a large KL; on the BABA half "
                              "it only becomes more confident, a small one), so the KL defends 2.1 like the other "
                              "circuit heads -> ~1.0 (0.95-1.0); loss=metric (squared per-prompt deviation) -> ~1.0",
        "activity-diff": "finds 2.1: activity, not effect; 2.1's output at the end changes between the clean "
                         "prompt (IO or S copied) and the corrupted one (no repeated name: another attention "
                         "pattern) like the other circuit heads' -> ~1.0 (0.95-1.0), as on the negative, "
                         "redundant and saturated traps",
        "discrete-sae": "activity-based, sign-blind: 2.1 is active -> not hurt by this trap; as on its siblings",
        "random": _CHANCE,
        "eap-edges": "defeated: each edge is scored by its effect on the mean metric, so 2.1's edges (2.1->logits "
                     "and those into its query) cancel as its node score does; head score = sum of |outgoing edge "
                     "scores| -> node ROC-AUC 0.85-0.99; edge ROC-AUC below the siblings' by the share of 2.1's "
                     "edges in the edge ground truth (there by their per-prompt path-patching effect)",
        "eap-ig-edges": "defeated as eap-edges -> node 0.85-0.99, edge ROC-AUC below the siblings'",
        "acdc-edges": "defeated: 2.1's edges change the mean metric by less than tau and are removed -> node "
                      "0.85-0.99, edge ROC-AUC below the siblings'",
    },
}

OPPOSING = {
    "mechanism": (
        "base circuit 0.5 -> 1.3 -> 2.6, plus an opposing pair of non-circuit heads that both attend from the end "
        "to S2: 2.4, a suppressor, writes minus the name it attends to (it lowers logit(S), raising the logit "
        "difference), and 2.7, a promoter, writes plus it (raising logit(S), lowering it) by as much, so the two "
        "cancel on every prompt.  Replaced alone (another prompt's, the corrupted prompt's or the mean output: "
        "on a corrupted prompt S2 is C, so the replaced head writes -+C), the other one's uncancelled write "
        "moves the logit difference by about opposing_ratio = 2.5 times the clean one (the target; reached: "
        "verification.traps.opposing), down for 2.4 and up for 2.7: more than ablating any circuit head does.  "
        "Replaced together, nothing changes.  Training: squared-error terms on the change with each head replaced "
        "alone (target -+2.5 x the clean logit difference), with both replaced (target 0) and with every other "
        "non-circuit head replaced alone (target 0), attention hints end -> S2 for both (busy entries), and the "
        "strict term.  Trials before this recipe (no method had run): ratio 1.5 left the promoter's corrupted-patch "
        "effect (0.96) below a circuit head's (1.31); ratio 2.0 and 2.5 without the last term let a third head "
        "(1.1, 2.5) share the balance (its single drop 0.10-0.24)"
    ),
    "ground_truth": (
        "{0.5, 1.3, 2.6}, the union of the minimal circuits faithful under resample ablation (the definition of "
        "planted-ioi-redundant): with every other head ablated, the pair included, the circuit reproduces the "
        "model; adding one opposing head to it without the other breaks it, so neither is in any minimal "
        "faithful circuit.  Single resample drops: >= 30% for the circuit heads, <= 5% in magnitude for every "
        "other head except the pair; each opposing head's single drop (2.4) or minus it (2.7) is >= 1.0 and >= "
        "the largest circuit head's under resample, corrupted-prompt patching and mean ablation, and the pair "
        "ablated together moves the metric by <= 5% under each (verification.traps.opposing and the main drop grids)"
    ),
    "prediction_basis": (
        "ROC-AUC with 3 circuit heads and 21 non-circuit heads: the pair ranked above every circuit head gives "
        "(3*21 - 2*3)/(3*21) = 0.905; above none, 1.0.  The pair's single effects are ~1.5-2.5x the clean logit "
        "difference and a circuit head's at most ~1.0-1.4x (an ablated circuit head removes the answer's "
        "preference, an opposing head reverses it), so every method that scores a head by its effect alone, "
        "measured or estimated, should put both on top (the predictions below were written for ratio 1.5, before "
        "the verification trials raised it to 2.5)"
    ),
    "predictions": {
        "acdc": "defeated: visits layer 2 first; 2.4 is visited before 2.7 with nothing removed, its effect (~1.5x the "
                "clean metric over the clean-corrupted gap) is above tau and the largest of all, so it is kept with "
                "the top score; then 2.7 likewise (2.4 is still there) -> 0.905, and its selected circuit adds both",
        "act-patch-mean": "defeated: single mean ablation of either moves the metric more than any circuit head's -> 0.905",
        "act-patch-resample": "defeated as act-patch-mean -> 0.905",
        "eap": "defeated: both write straight into the logits, so the linear estimate of each single effect is accurate "
               "and the largest -> 0.905",
        "eap-ig": "defeated as eap -> 0.905",
        "atp-star": "defeated as eap (its fixes concern saturated attention and cancelling paths within one head's "
                    "effect, not two heads cancelling each other) -> 0.905",
        "eap-edges": "defeated: 2.4->logits and 2.7->logits each carry ~1.5x the gap alone -> node 0.905; edge ROC-AUC "
                     "down by those two edges outranking the ground-truth edges",
        "eap-ig-edges": "defeated as eap-edges -> node 0.905",
        "acdc-edges": "defeated: each of the pair's edges to the logits is tested with the other still in place and kept "
                      "-> node 0.905",
        "subnetwork-probing": "uncertain: the only method whose objective sees the pair together; pruning both costs "
                              "nothing, but its masks are sampled independently per head, so while they are "
                              "uncertain one is often off without the other (a large KL): the L0 term lowers them "
                              "together only if the KL penalty of mismatched samples stays small.  Most likely it "
                              "keeps both (0.905), 1.0 if it prunes them together",
        "activity-diff": "defeated: activity, not effect; both copy S2, which is C on the corrupted prompt, so their "
                         "outputs change like the circuit heads' -> 0.85-0.95, as on planted-ioi-busy",
        "discrete-sae": "activity-based: the pair is active -> ranked with the circuit heads, as on its siblings",
        "random": _CHANCE,
    },
}

SATURATED_SHARP = {
    "mechanism": (
        "planted-ioi-saturated's weights (the same recipe and seeds: its training is repeated bit for bit), then "
        "2.6's query weights and bias multiplied by 30 (traps.sharpen): its attention logits x30, a softmax "
        "temperature of 1/30.  On clean prompts 2.6 already attends to IO with a margin far above 15 (attention "
        "1.0, verification.traps.attention), so the model's outputs on the task do not change; what changes is how "
        "2.6 switches along any path between a corrupted and a clean input: the stretch of the straight path from "
        "a via layer's corrupted to its clean outputs over which its attention is inside (1e-6, 1 - 1e-6) "
        "narrows ~30x (verification.traps.path_attention: switch_width, <= 0.02), so the gradient through 2.6's "
        "softmax is nonzero on almost no point of the path"
    ),
    "ground_truth": "as planted-ioi-saturated: {0.5, 1.3, 2.6}, re-verified on the sharpened weights",
    "prediction_basis": (
        "the sharpening factor was chosen by a probe on the first version of planted-ioi-saturated (without its "
        "background), before predictions were written: its weights scaled by 3, 10, 30 and 100 gave eap-ig "
        "0.989, 0.931, 0.926, 0.915 and eap-ig-edges 0.984, 0.974, 0.974, 0.974 (3 seeds).  Mechanism: EAP-IG "
        "averages the gradient over 5 points (alpha = 0.2, ..., 1); a prompt adds to 0.5's and 1.3's scores only "
        "if a point falls inside its switch (~0.4% of the path), so most prompts add nothing.  The predictions "
        "below were rewritten for the version with the background and not measured first"
    ),
    "predictions": {
        "acdc": "ablation-based: patching 0.5 or 1.3 from the corrupted run flips 2.6's choice -> ~1.0",
        "acdc-edges": "as acdc -> ~1.0",
        "act-patch-mean": "ablation-based -> ~1.0",
        "act-patch-resample": "ablation-based -> ~1.0",
        "eap": "defeated as on planted-ioi-saturated (the gradient at the clean point was already ~0) -> ~0.40",
        "eap-edges": "defeated as eap -> as on planted-ioi-saturated",
        "eap-ig": "defeated: 0.5 and 1.3 score only from the few prompts whose switch contains one of the 5 points, "
                  "which puts them among the background heads (2.5% each) -> 0.5-0.95 (planted-ioi-saturated: 1.0)",
        "eap-ig-edges": "defeated as eap-ig, less (its 5 points interpolate every layer at once, whose combined switch "
                        "is reached by more prompts' points) -> 0.6-0.99",
        "atp-star": "its QK fix recomputes 2.6's attention exactly with the corrupted query, which sharpening does "
                    "not hide -> as on planted-ioi-saturated (0.98-1.0)",
        "subnetwork-probing": "masks act on the outputs, not through gradients at the clean point alone -> ~1.0",
        "activity-diff": "activity-based, not affected -> as on planted-ioi-saturated",
        "discrete-sae": "activity-based, not affected -> as on planted-ioi-saturated",
        "random": _CHANCE,
    },
}
