//! The demo's sample workflows: an order with chained activities, a durable timer, an approval
//! event with a timeout, a sub-orchestration per line item, and a saga that compensates when
//! the payment is refused.

use serde::{Deserialize, Serialize};
use sluice_runtime::{
    ActivityContext, ActivityOptions, Backoff, Either, Failure, OrchestrationContext, Registry,
    RetryPolicy,
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

fn quick_retry() -> ActivityOptions {
    ActivityOptions::new().retry(RetryPolicy::attempts(3).with_backoff(Backoff::Exponential {
        initial_ms: 10,
        multiplier: 2.0,
        max_ms: 100,
    }))
}

/// A reservation of one line's stock.
pub(crate) type Reservation = String;

async fn order(ctx: OrchestrationContext, order: Order) -> Result<String, Failure> {
    // Chained activities.
    ctx.set_custom_status("validating");
    ctx.activity_with::<()>("validate", &order, &quick_retry())
        .await?;

    // Fan-out: one sub-orchestration per line item reserves its stock.
    ctx.set_custom_status("reserving stock");
    let lines = order
        .lines
        .iter()
        .map(|line| ctx.sub_orchestration::<Reservation>("reserve_line", line))
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
    ctx.timer(Duration::from_millis(20)).await;

    // Large orders wait for an approval event (text: "approve" or anything else), with a
    // timeout; the losing wait is dropped (an event wait gives its event back).
    if order.total_cents > APPROVAL_LIMIT_CENTS {
        ctx.set_custom_status("awaiting approval");
        let timeout = ctx.timer(Duration::from_millis(order.approval_timeout_ms));
        let approved = match ctx.select2(timeout, ctx.wait_for_event("approval")).await {
            Either::Left(()) => false,
            Either::Right(decision) => decision == "approve",
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
    let charge = Charge {
        cents: order.total_cents,
        card_accepts: order.card_accepts,
    };
    match ctx.activity::<String>("charge", &charge).await {
        Ok(receipt) => {
            ctx.set_custom_status("shipping");
            let tracking: String = ctx.activity_with("ship", &receipt, &quick_retry()).await?;
            ctx.set_custom_status("done");
            Ok(format!("{receipt} {tracking}"))
        }
        Err(refused) => {
            compensate(&ctx, &reservations).await?;
            Err(Failure::new("payment_refused", refused.message))
        }
    }
}

/// What the charge activity takes.
#[derive(Serialize, Deserialize)]
struct Charge {
    cents: u64,
    card_accepts: bool,
}

async fn compensate(
    ctx: &OrchestrationContext,
    reservations: &[Reservation],
) -> Result<(), Failure> {
    ctx.set_custom_status("compensating");
    let releases = reservations
        .iter()
        .map(|reservation| ctx.activity::<String>("release_stock", reservation))
        .collect();
    for released in ctx.join(releases).await {
        released?;
    }
    Ok(())
}

async fn reserve_line(ctx: OrchestrationContext, line: Line) -> Result<Reservation, Failure> {
    let reserved: Reservation = ctx
        .activity_with("reserve_stock", &line, &quick_retry())
        .await?;
    ctx.activity("pick", &reserved).await
}

/// Simulated work: a few milliseconds, like a quick call to another service.
async fn work(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub(crate) fn registry() -> Registry {
    Registry::new()
        .orchestration_typed("order", order)
        .orchestration_typed("reserve_line", reserve_line)
        .activity_typed(
            "validate",
            |_ctx: ActivityContext, order: Order| async move {
                work(1).await;
                if order.lines.is_empty() {
                    return Err(Failure::non_retryable(
                        "invalid_order",
                        "an order needs at least one line",
                    ));
                }
                Ok(())
            },
        )
        .activity_typed(
            "reserve_stock",
            |ctx: ActivityContext, line: Line| async move {
                work(2).await;
                Ok(format!(
                    "rsv:{}:{}x{}",
                    ctx.instance_id(),
                    line.sku,
                    line.quantity
                ))
            },
        )
        .activity_typed(
            "pick",
            |_ctx: ActivityContext, reservation: Reservation| async move {
                work(1).await;
                Ok(reservation)
            },
        )
        .activity_typed(
            "release_stock",
            |_ctx: ActivityContext, reservation: Reservation| async move {
                work(1).await;
                Ok(format!("released {reservation}"))
            },
        )
        .activity_typed(
            "charge",
            |_ctx: ActivityContext, charge: Charge| async move {
                work(3).await;
                if charge.card_accepts {
                    Ok(format!("receipt-{}", charge.cents))
                } else {
                    Err(Failure::non_retryable(
                        "card_declined",
                        "the card issuer refused the charge",
                    ))
                }
            },
        )
        .activity_typed(
            "ship",
            |ctx: ActivityContext, _receipt: String| async move {
                work(2).await;
                Ok(format!("track-{}", ctx.instance_id()))
            },
        )
}
