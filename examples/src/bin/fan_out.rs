//! A fan-out: one activity per item, retried with backoff when an attempt fails, joined in
//! order; one item is sent to a typed sub-orchestration.

use serde::{Deserialize, Serialize};
use sluice_runtime::{
    ActivityContext, ActivityOptions, Backoff, Failure, OrchestrationContext, Registry, RetryPolicy,
};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Report {
    words: Vec<usize>,
    total: usize,
    longest: String,
}

/// Counts the words of every page in parallel, then finds the longest word of the first.
async fn report(ctx: OrchestrationContext, pages: Vec<String>) -> Result<Report, Failure> {
    let flaky_service = ActivityOptions::new()
        .retry(RetryPolicy::attempts(4).with_backoff(Backoff::Exponential {
            initial_ms: 10,
            multiplier: 2.0,
            max_ms: 200,
        }))
        .attempt_timeout(Duration::from_secs(5))
        .total_timeout(Duration::from_secs(60));
    let counts = pages
        .iter()
        .map(|page| ctx.activity_with::<usize>("count_words", page, &flaky_service))
        .collect();
    let first = pages.first().cloned().unwrap_or_default();
    // The join of every count and the sub-orchestration, typed, in one wait.
    let (counts, longest) = ctx
        .join2(
            ctx.join(counts),
            ctx.sub_orchestration::<String>("longest_word", &first),
        )
        .await;
    let words = counts
        .into_iter()
        .collect::<Result<Vec<usize>, Failure>>()?;
    Ok(Report {
        total: words.iter().sum(),
        words,
        longest: longest?,
    })
}

async fn longest_word(ctx: OrchestrationContext, page: String) -> Result<String, Failure> {
    let words: Vec<String> = ctx.activity("split", &page).await?;
    Ok(words
        .into_iter()
        .max_by_key(|word| word.len())
        .unwrap_or_default())
}

/// Fails its first attempt on every other page, as a service under load would.
async fn count_words(ctx: ActivityContext, page: String) -> Result<usize, Failure> {
    if ctx.attempt() == 1 && page.len() % 2 == 1 {
        println!("  attempt 1 of '{page}' failed; retried");
        return Err(Failure::new("unavailable", "try again"));
    }
    Ok(page.split_whitespace().count())
}

async fn split(_ctx: ActivityContext, page: String) -> Result<Vec<String>, Failure> {
    Ok(page.split_whitespace().map(str::to_string).collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .orchestration_typed("report", report)
        .orchestration_typed("longest_word", longest_word)
        .activity_typed("count_words", count_words)
        .activity_typed("split", split);
    let (runtime, _dir) = sluice_examples::start(registry);
    let client = runtime.client();
    let pages = vec![
        "durable execution replays history".to_string(),
        "one".to_string(),
        "a fan out joins in order".to_string(),
        "retries are durable too".to_string(),
    ];
    client.start_typed("report", "report-1", &pages).await?;
    let report: Report = client
        .wait_for_output("report-1", Duration::from_secs(30))
        .await?;
    println!("{report:?}");
    assert_eq!(
        report,
        Report {
            words: vec![4, 1, 6, 4],
            total: 15,
            longest: "execution".into()
        }
    );
    runtime.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
