//! A saga: book a flight, a hotel and a car; when a step fails for good, undo the steps done,
//! newest first.

use serde::{Deserialize, Serialize};
use sluice_runtime::{
    ActivityContext, ActivityOptions, ClientError, Failure, OrchestrationContext, Registry,
    RetryPolicy,
};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Trip {
    traveller: String,
    /// The car rental has no car for this traveller.
    no_car: bool,
}

/// Runs the bookings in order; on a failure compensates what was booked and fails.
async fn book_trip(ctx: OrchestrationContext, trip: Trip) -> Result<Vec<String>, Failure> {
    let retry = ActivityOptions::new().retry(RetryPolicy::attempts(3));
    let mut booked: Vec<(&str, String)> = Vec::new();
    for (step, undo) in [
        ("book_flight", "cancel_flight"),
        ("book_hotel", "cancel_hotel"),
        ("book_car", "cancel_car"),
    ] {
        match ctx.activity_with::<String>(step, &trip, &retry).await {
            Ok(reference) => booked.push((undo, reference)),
            Err(failure) => {
                for (undo, reference) in booked.iter().rev() {
                    ctx.activity_with::<()>(*undo, reference, &retry).await?;
                }
                return Err(failure);
            }
        }
    }
    Ok(booked.into_iter().map(|(_, reference)| reference).collect())
}

async fn book_flight(_ctx: ActivityContext, trip: Trip) -> Result<String, Failure> {
    Ok(format!("flight for {}", trip.traveller))
}

async fn book_hotel(_ctx: ActivityContext, trip: Trip) -> Result<String, Failure> {
    Ok(format!("hotel for {}", trip.traveller))
}

async fn book_car(ctx: ActivityContext, trip: Trip) -> Result<String, Failure> {
    if trip.no_car {
        // Final: retrying cannot help, so the policy's other attempts are not used.
        println!("  no car (attempt {})", ctx.attempt());
        return Err(Failure::non_retryable("no_car", "no car is available"));
    }
    Ok(format!("car for {}", trip.traveller))
}

async fn cancel(ctx: ActivityContext, reference: String) -> Result<(), Failure> {
    println!("  {}: {reference}", ctx.name());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .orchestration_typed("book_trip", book_trip)
        .activity_typed("book_flight", book_flight)
        .activity_typed("book_hotel", book_hotel)
        .activity_typed("book_car", book_car)
        .activity_typed("cancel_flight", cancel)
        .activity_typed("cancel_hotel", cancel)
        .activity_typed("cancel_car", cancel);
    let (runtime, _dir) = sluice_examples::start(registry);
    let client = runtime.client();
    let wait = Duration::from_secs(30);
    let trip = |traveller: &str, no_car| Trip {
        traveller: traveller.into(),
        no_car,
    };
    client
        .start_typed("book_trip", "ada", &trip("ada", false))
        .await?;
    client
        .start_typed("book_trip", "alan", &trip("alan", true))
        .await?;
    let booked: Vec<String> = client.wait_for_output("ada", wait).await?;
    println!("ada: {booked:?}");
    assert_eq!(booked, ["flight for ada", "hotel for ada", "car for ada"]);
    match client.wait_for_output::<Vec<String>>("alan", wait).await {
        Err(ClientError::Failed(failure)) => {
            println!("alan: {failure}");
            assert_eq!(failure.code, "no_car");
            assert!(failure.non_retryable);
        }
        other => panic!("alan's trip should fail and be compensated: {other:?}"),
    }
    // Compensation ran newest first, and the failed step ran once.
    let history = client.history("alan").await?;
    let steps: Vec<&str> = history
        .iter()
        .filter_map(|event| match event {
            sluice_runtime::Event::ActivityScheduled { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            "book_flight",
            "book_hotel",
            "book_car",
            "cancel_hotel",
            "cancel_flight"
        ]
    );
    runtime.shutdown(wait).await;
    Ok(())
}
