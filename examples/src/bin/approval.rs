//! An approval flow: ask for a decision, remind once, give up after a deadline.

use serde::{Deserialize, Serialize};
use sluice_runtime::{ActivityContext, Either, Failure, OrchestrationContext, Registry};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Request {
    expense: String,
    amount_cents: u64,
    /// How long the approver has, in milliseconds (short here, days in real life).
    deadline_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Decision {
    approved: bool,
    approver: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Outcome {
    Paid { approver: String, receipt: String },
    Rejected { approver: String },
    Expired,
}

/// Waits for the "decision" event; reminds the approver halfway; expires at the deadline.
async fn approval(ctx: OrchestrationContext, request: Request) -> Result<Outcome, Failure> {
    ctx.activity::<()>("notify", &format!("please approve {}", request.expense))
        .await?;
    let half = Duration::from_millis(request.deadline_ms / 2);
    let mut decision = match ctx
        .select2(ctx.event::<Decision>("decision"), ctx.timer(half))
        .await
    {
        Either::Left(decision) => Some(decision?),
        Either::Right(()) => None,
    };
    if decision.is_none() {
        ctx.activity::<()>("notify", &format!("reminder: {}", request.expense))
            .await?;
        // The event wait that lost the first race gave its event back: nothing is missed.
        decision = match ctx
            .select2(ctx.event::<Decision>("decision"), ctx.timer(half))
            .await
        {
            Either::Left(decision) => Some(decision?),
            Either::Right(()) => None,
        };
    }
    Ok(match decision {
        None => Outcome::Expired,
        Some(Decision {
            approved: false,
            approver,
        }) => Outcome::Rejected { approver },
        Some(Decision { approver, .. }) => {
            let receipt = ctx.activity("pay", &request.amount_cents).await?;
            Outcome::Paid { approver, receipt }
        }
    })
}

async fn notify(_ctx: ActivityContext, message: String) -> Result<(), Failure> {
    println!("  notify: {message}");
    Ok(())
}

async fn pay(ctx: ActivityContext, cents: u64) -> Result<String, Failure> {
    Ok(format!("paid {cents} cents for {}", ctx.instance_id()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .orchestration_typed("approval", approval)
        .activity_typed("notify", notify)
        .activity_typed("pay", pay);
    let (runtime, _dir) = sluice_examples::start(registry);
    let client = runtime.client();
    let request = |expense: &str, deadline_ms| Request {
        expense: expense.into(),
        amount_cents: 12_50,
        deadline_ms,
    };
    client
        .start_typed("approval", "taxi", &request("a taxi", 60_000))
        .await?;
    client
        .start_typed("approval", "yacht", &request("a yacht", 60_000))
        .await?;
    client
        .start_typed("approval", "lunch", &request("a lunch", 400))
        .await?;
    let decide = |approved, approver: &str| Decision {
        approved,
        approver: approver.into(),
    };
    client
        .raise_event_typed("taxi", "decision", &decide(true, "ada"))
        .await?;
    client
        .raise_event_typed("yacht", "decision", &decide(false, "grace"))
        .await?;
    let wait = Duration::from_secs(30);
    let taxi: Outcome = client.wait_for_output("taxi", wait).await?;
    let yacht: Outcome = client.wait_for_output("yacht", wait).await?;
    let lunch: Outcome = client.wait_for_output("lunch", wait).await?;
    println!("taxi: {taxi:?}\nyacht: {yacht:?}\nlunch: {lunch:?}");
    assert_eq!(
        taxi,
        Outcome::Paid {
            approver: "ada".into(),
            receipt: "paid 1250 cents for taxi".into()
        }
    );
    assert_eq!(
        yacht,
        Outcome::Rejected {
            approver: "grace".into()
        }
    );
    assert_eq!(lunch, Outcome::Expired);
    runtime.shutdown(wait).await;
    Ok(())
}
