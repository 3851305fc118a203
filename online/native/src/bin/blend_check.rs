//! Parity harness for the blend port: reads one JSON case a line on stdin, writes one JSON
//! result a line on stdout (`tests/blend_parity.py` writes the cases and compares).
//!
//! Every float travels as its IEEE-754 bit pattern (a u64), both ways, so a comparison is of
//! bits and no decimal parsing can hide a last-bit difference. Kinds of case:
//! `blend` (Candidates -> blend), `rec` (a request from read inputs -> `recommend`, with its
//! intermediate values), `sknn` (the session_knn source's three steps), `new` (`new_item_scores`), `fmt` (floats -> orjson-style text), `time` (`rec` timed).

use std::io::{self, BufRead, Write};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use driftrec_reader::blend::candidates::{PopularitySnapshot, RecentRule};
use driftrec_reader::blend::decay::DecayPolicy;
use driftrec_reader::blend::json::{to_vec, write_f64};
use driftrec_reader::blend::new_items::{new_item_scores, NewEntry, NewItemRule, NewItemTable};
use driftrec_reader::blend::session_knn::{session_knn_scores, session_neighbours, session_query, ClickLog};
use driftrec_reader::blend::request::{recommend, RecInputs, RecSettings, UserRead};
use driftrec_reader::blend::{
    blend, blend_each, BlendWeights, Candidates, Map, Pairs, Scored, Set,
};

fn float(v: &Value) -> Result<f64> {
    v.as_u64()
        .map(f64::from_bits)
        .ok_or_else(|| anyhow!("not a float's bits: {v}"))
}

fn bits(x: f64) -> Value {
    json!(x.to_bits())
}

fn text(v: &Value) -> Result<String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("not a string: {v}"))
}

fn strings(v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .ok_or_else(|| anyhow!("not a list: {v}"))?
        .iter()
        .map(text)
        .collect()
}

fn pairs(v: &Value) -> Result<Pairs> {
    let list = v
        .as_array()
        .ok_or_else(|| anyhow!("not a list of pairs: {v}"))?;
    list.iter()
        .map(|p| Ok((text(&p[0])?, float(&p[1])?)))
        .collect()
}

fn rows(v: &Value) -> Result<Map<String, Pairs>> {
    let obj = v.as_object().ok_or_else(|| anyhow!("not an object: {v}"))?;
    obj.iter()
        .map(|(k, row)| Ok((k.clone(), pairs(row)?)))
        .collect()
}

fn labels(v: &Value) -> Result<Map<String, String>> {
    match v {
        Value::Null => Ok(Map::default()),
        _ => v
            .as_object()
            .ok_or_else(|| anyhow!("not an object: {v}"))?
            .iter()
            .map(|(k, s)| Ok((k.clone(), text(s)?)))
            .collect(),
    }
}

fn label(v: &Value) -> Result<Option<String>> {
    if v.is_null() {
        Ok(None)
    } else {
        text(v).map(Some)
    }
}

fn weights(v: &Value) -> Result<BlendWeights> {
    let overrides: Vec<(String, f64)> = v
        .as_object()
        .context("weights")?
        .iter()
        .map(|(k, x)| Ok((k.clone(), float(x)?)))
        .collect::<Result<_>>()?;
    BlendWeights::default()
        .with_overrides(&overrides)
        .map_err(|e| anyhow!(e))
}

fn candidates(v: &Value) -> Result<Candidates> {
    Ok(Candidates {
        recent: pairs(&v["recent"])?,
        neighbours: rows(&v["neighbours"])?,
        norms: v["norms"]
            .as_object()
            .context("norms")?
            .iter()
            .map(|(k, x)| Ok((k.clone(), float(x)?)))
            .collect::<Result<_>>()?,
        vector_scores: pairs(&v["vector_scores"])?,
        tf_scores: pairs(&v["tf_scores"])?,
        similar_users: pairs(&v["similar_users"])?,
        trending: pairs(&v["trending"])?,
        trending_label: label(&v["trending_label"])?,
        new_items: pairs(&v["new_items"])?,
        new_labels: labels(&v["new_labels"])?,
        session_knn: pairs(&v["session_knn"])?,
    })
}

fn scored(items: &[Scored]) -> Result<Value> {
    let json_text = String::from_utf8(to_vec(items)?)?;
    Ok(json!({
        "items": items.iter().map(|x| json!([x.item, x.score.to_bits(), x.source.name(), x.reason])).collect::<Vec<_>>(),
        "json": json_text,
    }))
}

fn pairs_out(p: &[(String, f64)]) -> Value {
    Value::Array(p.iter().map(|(i, x)| json!([i, x.to_bits()])).collect())
}

fn rec_inputs(v: &Value) -> Result<(RecInputs, usize, BlendWeights, DecayPolicy, RecSettings)> {
    let s = &v["settings"];
    let rule = RecentRule {
        k: s["k"].as_u64().context("k")? as usize,
        order: text(&s["order"])?.parse().map_err(|e: String| anyhow!(e))?,
        position_decay: float(&s["position_decay"])?,
        session_gap_s: float(&s["session_gap_s"])?,
        outside_session: float(&s["outside_session"])?,
    };
    let settings = RecSettings {
        recent: rule,
        shrinkage: float(&s["shrinkage"])?,
        alpha: float(&s["alpha"])?,
        history_len: 50,
    };
    let snap = &v["snapshot"];
    let inputs = RecInputs {
        user: UserRead {
            history: pairs(&v["history"])?,
            weights: pairs(&v["weights_stored"])?,
            landmark: float(&v["landmark"])?,
            now: float(&v["now"])?,
        },
        exclude: strings(&v["exclude"])?,
        context: strings(&v["context"])?,
        neighbour_rows: rows(&v["neighbour_rows"])?,
        user_rows: rows(&v["user_rows"])?,
        vector_scores: pairs(&v["vector_scores"])?,
        tf_scores: pairs(&v["tf_scores"])?,
        similar: pairs(&v["similar"])?,
        trending: pairs(&v["trending"])?,
        trending_label: label(&v["trending_label"])?,
        new_items: pairs(&v["new_items"])?,
        new_labels: labels(&v["new_labels"])?,
        session_knn: pairs(&v["session_knn"])?,
        snapshot: PopularitySnapshot {
            pop: snap["pop"]
                .as_object()
                .context("pop")?
                .iter()
                .map(|(k, x)| Ok((k.clone(), float(x)?)))
                .collect::<Result<_>>()?,
            floor: float(&snap["floor"])?,
            landmark: if snap["landmark"].is_null() {
                None
            } else {
                Some(float(&snap["landmark"])?)
            },
        },
        hidden: strings(&v["hidden"])?.into_iter().collect(),
    };
    let policy = DecayPolicy::new(float(&v["half_life_s"])?);
    Ok((
        inputs,
        v["n"].as_u64().context("n")? as usize,
        weights(&v["weights"])?,
        policy,
        settings,
    ))
}

fn run(v: &Value) -> Result<Value> {
    match v["kind"].as_str().context("kind")? {
        "blend" => {
            let c = candidates(&v["cands"])?;
            let exclude: Set<String> = strings(&v["exclude"])?.into_iter().collect();
            let n = v["n"].as_u64().context("n")? as usize;
            let (shrinkage, alpha) = (float(&v["shrinkage"])?, float(&v["alpha"])?);
            let mut out = scored(&blend(
                &c,
                n,
                &exclude,
                &weights(&v["weights"])?,
                shrinkage,
                alpha,
            ))?;
            // An interleaving experiment's rankings: blend_each over several weights sets.
            if let Some(sets) = v.get("weights_each").and_then(Value::as_array) {
                let sets: Vec<BlendWeights> = sets.iter().map(weights).collect::<Result<_>>()?;
                let each = blend_each(&c, n, &sets, &exclude, shrinkage, alpha);
                out["each"] = Value::Array(each.iter().map(|x| scored(x)).collect::<Result<_>>()?);
            }
            Ok(out)
        }
        "rec" => {
            let (inputs, n, w, policy, settings) = rec_inputs(v)?;
            let (plan, cands, got) = recommend(&inputs, n, &w, &policy, &settings);
            let mut out = scored(&got)?;
            let norms: serde_json::Map<String, Value> = cands
                .norms
                .iter()
                .map(|(k, x)| (k.clone(), bits(*x)))
                .collect();
            let neighbours: serde_json::Map<String, Value> = cands
                .neighbours
                .iter()
                .map(|(k, r)| (k.clone(), pairs_out(r)))
                .collect();
            let mut excluded: Vec<&String> = plan.excluded.iter().collect();
            excluded.sort();
            out["factor"] = bits(plan.factor);
            out["rate"] = bits(policy.rate);
            out["decayed"] = pairs_out(&plan.decayed);
            out["recent"] = pairs_out(&plan.recent);
            out["excluded"] = json!(excluded);
            out["norms"] = Value::Object(norms);
            out["neighbours"] = Value::Object(neighbours);
            out["similar_users"] = pairs_out(&cands.similar_users);
            out["trending"] = pairs_out(&cands.trending);
            Ok(out)
        }
        "sknn" => {
            // session_query -> session_neighbours -> session_knn_scores, as `_session_knn` runs them.
            let history = pairs(&v["history"])?;
            let context = strings(&v["context"])?;
            let gap = float(&v["gap_s"])?;
            let k = v["k"].as_u64().context("k")? as usize;
            let m = v["m"].as_u64().context("m")? as usize;
            let query = session_query(&history, &context, k, gap);
            let index = rows(&v["index_rows"])?;
            let by_query = if v["rank_by_query"].as_bool().unwrap_or(true) { query.clone() } else { Vec::new() };
            let neighbours = session_neighbours(&index, &text(&v["user"])?, m, &by_query);
            let mut clicks: Map<String, ClickLog> = Map::default();
            for (shopper, log) in v["clicks"].as_object().context("clicks")? {
                let times: Vec<f64> = log[0].as_array().context("times")?.iter().map(float).collect::<Result<_>>()?;
                clicks.insert(shopper.clone(), (times, text(&log[1])?));
            }
            let scores = session_knn_scores(&query, &neighbours, &clicks, gap);
            Ok(json!({"query": query, "neighbours": pairs_out(&neighbours), "scores": pairs_out(&scores)}))
        }
        "new" => {
            let mut table = NewItemTable::default();
            for (item, feats) in v["features"].as_object().context("features")? {
                table.features.insert(item.clone(), strings(feats)?.into_iter().collect());
            }
            for (feature, list) in v["newest"].as_object().context("newest")? {
                let entries = list
                    .as_array()
                    .context("newest list")?
                    .iter()
                    .map(|e| Ok(NewEntry { neg_added: float(&e[0])?, item: text(&e[1])?, features: strings(&e[2])?.into_iter().collect() }))
                    .collect::<Result<_>>()?;
                table.newest.insert(feature.clone(), entries);
            }
            let r = &v["rule"];
            let rule = NewItemRule {
                half_life_s: float(&r["half_life_s"])?,
                max_age_s: float(&r["max_age_s"])?,
                per_feature: r["per_feature"].as_u64().context("per_feature")? as usize,
            };
            let (scores, labels) = new_item_scores(&pairs(&v["recent"])?, &table, float(&v["now"])?, &rule);
            Ok(json!({"scores": pairs_out(&scores), "labels": labels}))
        }
        "fmt" => {
            let texts: Vec<String> = v["bits"]
                .as_array()
                .context("bits")?
                .iter()
                .map(|b| {
                    let x = float(b)?;
                    Ok(if x.is_finite() {
                        let mut s = String::new();
                        write_f64(&mut s, x);
                        s
                    } else {
                        String::from_utf8(to_vec(&x)?)?
                    })
                })
                .collect::<Result<_>>()?;
            let strings_json: Vec<String> = strings(&v["strings"])?
                .iter()
                .map(|s| Ok(String::from_utf8(to_vec(s)?)?))
                .collect::<Result<_>>()?;
            Ok(json!({"floats": texts, "strings": strings_json}))
        }
        "time" => {
            // Per-call cost of `recommend` (steps 1-4, with the copy of the read inputs it makes
            // here) and of `blend` alone on its candidates: best of 5 rounds of `reps` calls, as
            // the Python side takes the best of timeit's rounds (the VM is shared: the best round
            // is the one least disturbed).
            let (inputs, n, w, policy, settings) = rec_inputs(v)?;
            let reps = v["reps"].as_u64().context("reps")? as u32;
            let (plan, cands, _) = recommend(&inputs, n, &w, &policy, &settings);
            let mut exclude = plan.excluded.clone();
            exclude.extend(inputs.hidden.iter().cloned());
            let mut sink = 0usize;
            let mut best = |f: &mut dyn FnMut() -> usize| {
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..reps {
                            sink += f();
                        }
                        t.elapsed().as_secs_f64() / f64::from(reps)
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            // "only": "blend" times the blend alone (for `perf stat`, whose counts are steadier
            // than times on a shared machine).
            let only_blend = v["only"].as_str() == Some("blend");
            let full = if only_blend {
                f64::NAN
            } else {
                best(&mut || recommend(&inputs, n, &w, &policy, &settings).2.len())
            };
            let blend_only = best(&mut || {
                blend(&cands, n, &exclude, &w, settings.shrinkage, settings.alpha).len()
            });
            Ok(json!({"recommend_s": full, "blend_s": blend_only, "sink": sink}))
        }
        other => Err(anyhow!("unknown kind {other}")),
    }
}

fn main() -> Result<()> {
    let stdin = io::stdin();
    let mut out = io::BufWriter::new(io::stdout().lock());
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).context("a case is one JSON object a line")?;
        let result = run(&v).unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        serde_json::to_writer(&mut out, &result)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
