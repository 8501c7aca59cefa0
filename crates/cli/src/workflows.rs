//! The demo's sample workflows: an order with chained activities, a durable timer, an approval
//! event with a timeout, a sub-orchestration per line item, and a saga that compensates when
//! the payment is refused.

use serde::{Deserialize, Serialize};
use sluice_runtime::{
    ActivityContext, Backoff, DurableOutput, Failure, OrchestrationContext, Registry, RetryPolicy,
};
use std::time::Duration;

/// An order as the demo generates it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) lines: Vec<Line>,
    /// Orders above this many cents need a human approval.
    pub(crate) total_cents: u64,
    /// Whether the (simulated) card accepts the charge; a refused card triggers compensation.
    pub(crate) card_accepts: bool,
    /// How long to wait for an approval before giving up.
    pub(crate) approval_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Line {
    pub(crate) sku: String,
    pub(crate) quantity: u32,
}

pub(crate) const APPROVAL_LIMIT_CENTS: u64 = 50_000;

fn quick_retry() -> RetryPolicy {
    RetryPolicy::attempts(3).with_backoff(Backoff::Exponential {
        initial_ms: 10,
        multiplier: 2.0,
        max_ms: 100,
    })
}

async fn order(ctx: OrchestrationContext, order: Order) -> Result<String, Failure> {
    // Chained activities.
    ctx.set_custom_status("validating");
    let order_json =
        serde_json::to_string(&order).map_err(|e| Failure::new("serde", e.to_string()))?;
    ctx.schedule_activity_with_retry("validate", order_json, quick_retry())
        .await?;

    // Fan-out: one sub-orchestration per line item reserves its stock.
    ctx.set_custom_status("reserving stock");
    let lines = order
        .lines
        .iter()
        .map(|line| {
            let input = serde_json::to_string(line).expect("lines serialise");
            ctx.call_sub_orchestration("reserve_line", input)
        })
        .collect();
    let mut reservations = Vec::new();
    let mut reservation_failed = None;
    for result in ctx.join(lines).await {
        match result {
            Ok(reservation) => reservations.push(reservation),
            Err(failure) => reservation_failed = Some(failure),
        }
    }
    if let Some(failure) = reservation_failed {
        compensate(&ctx, &reservations).await?;
        return Err(failure);
    }

    // A durable timer: the cooling-off period before charging.
    ctx.create_timer(Duration::from_millis(20)).await;

    // Large orders wait for an approval event, with a timeout.
    if order.total_cents > APPROVAL_LIMIT_CENTS {
        ctx.set_custom_status("awaiting approval");
        let timeout = ctx
            .create_timer(Duration::from_millis(order.approval_timeout_ms))
            .into_any();
        let decision = ctx.wait_for_event("approval").into_any();
        let approved = match ctx.select(vec![timeout, decision]).await {
            (_, DurableOutput::Event(decision)) => decision == "approve",
            _ => false,
        };
        if !approved {
            compensate(&ctx, &reservations).await?;
            return Err(Failure::new(
                "not_approved",
                "the order was rejected or not approved in time",
            ));
        }
    }

    // The saga's pivot: a refused payment undoes the reservations.
    ctx.set_custom_status("charging");
    let charge =
        serde_json::json!({ "cents": order.total_cents, "card_accepts": order.card_accepts });
    match ctx.schedule_activity("charge", charge.to_string()).await {
        Ok(receipt) => {
            ctx.set_custom_status("shipping");
            let tracking = ctx
                .schedule_activity_with_retry("ship", receipt.clone(), quick_retry())
                .await?;
            ctx.set_custom_status("done");
            Ok(format!("{receipt} {tracking}"))
        }
        Err(refused) => {
            compensate(&ctx, &reservations).await?;
            Err(Failure::new("payment_refused", refused.message))
        }
    }
}

async fn compensate(ctx: &OrchestrationContext, reservations: &[String]) -> Result<(), Failure> {
    ctx.set_custom_status("compensating");
    let releases = reservations
        .iter()
        .map(|r| ctx.schedule_activity("release_stock", r.clone()))
        .collect();
    for released in ctx.join(releases).await {
        released?;
    }
    Ok(())
}

async fn reserve_line(ctx: OrchestrationContext, line: String) -> Result<String, Failure> {
    let reserved = ctx
        .schedule_activity_with_retry("reserve_stock", line, quick_retry())
        .await?;
    ctx.schedule_activity("pick", reserved).await
}

/// Simulated work: a few milliseconds, like a quick call to another service.
async fn work(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub(crate) fn registry() -> Registry {
    Registry::new()
        .orchestration_typed("order", order)
        .orchestration("reserve_line", reserve_line)
        .activity(
            "validate",
            |_ctx: ActivityContext, order: String| async move {
                work(1).await;
                let order: Order = serde_json::from_str(&order)
                    .map_err(|e| Failure::new("invalid_order", e.to_string()))?;
                if order.lines.is_empty() {
                    return Err(Failure::new(
                        "invalid_order",
                        "an order needs at least one line",
                    ));
                }
                Ok("valid".to_string())
            },
        )
        .activity(
            "reserve_stock",
            |ctx: ActivityContext, line: String| async move {
                work(2).await;
                let line: Line = serde_json::from_str(&line)
                    .map_err(|e| Failure::new("invalid_line", e.to_string()))?;
                Ok(format!(
                    "rsv:{}:{}x{}",
                    ctx.instance_id(),
                    line.sku,
                    line.quantity
                ))
            },
        )
        .activity(
            "pick",
            |_ctx: ActivityContext, reservation: String| async move {
                work(1).await;
                Ok(reservation)
            },
        )
        .activity(
            "release_stock",
            |_ctx: ActivityContext, reservation: String| async move {
                work(1).await;
                Ok(format!("released {reservation}"))
            },
        )
        .activity(
            "charge",
            |_ctx: ActivityContext, charge: String| async move {
                work(3).await;
                let charge: serde_json::Value = serde_json::from_str(&charge)
                    .map_err(|e| Failure::new("invalid_charge", e.to_string()))?;
                if charge["card_accepts"].as_bool() == Some(true) {
                    Ok(format!("receipt-{}", charge["cents"]))
                } else {
                    Err(Failure::new(
                        "card_declined",
                        "the card issuer refused the charge",
                    ))
                }
            },
        )
        .activity(
            "ship",
            |ctx: ActivityContext, _receipt: String| async move {
                work(2).await;
                Ok(format!("track-{}", ctx.instance_id()))
            },
        )
}
