//! A ledger export (`GET /v1/campaigns/{id}/ledger.csv`, `tally export`) read back.

/// A ledger export read back: its sums and whether its rows are in log order.
#[derive(Debug)]
pub struct Ledger {
    /// (cents, rows) of donations and of retractions.
    pub donations: (u64, u64),
    pub retractions: (u64, u64),
    pub net_cents: i64,
    pub in_log_order: bool,
}

impl Ledger {
    pub fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "kind,partition,offset,recorded_at,event_time,payment_ref,refund_ref,order_id,user_id,amount_cents,net_cents,currency"
            )
        );
        let mut ledger = Ledger {
            donations: (0, 0),
            retractions: (0, 0),
            net_cents: 0,
            in_log_order: true,
        };
        let mut last: Option<(u64, u64)> = None;
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 12, "{line}");
            let place: (u64, u64) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
            ledger.in_log_order &= last.is_none_or(|last| last < place);
            last = Some(place);
            let amount: u64 = fields[9].parse().unwrap();
            let net: i64 = fields[10].parse().unwrap();
            match fields[0] {
                "donation" => {
                    assert_eq!(net, amount as i64, "{line}");
                    ledger.donations.0 += amount;
                    ledger.donations.1 += 1;
                }
                "refund" | "chargeback" => {
                    assert_eq!(net, -(amount as i64), "{line}");
                    ledger.retractions.0 += amount;
                    ledger.retractions.1 += 1;
                }
                other => panic!("a row of kind {other}: {line}"),
            }
            ledger.net_cents += net;
        }
        ledger
    }
}
