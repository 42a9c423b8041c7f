//! What both parts of the card benchmark (`cards.rs` and `card_costs.rs`) start dingops
//! with: the card template, the card callback secret and the admins who click. Its own
//! module so that `cards.rs`, which runs `card_costs.rs`, is the only one importing the other.

pub(crate) const TEMPLATE: &str = "dingops-bench.schema";
pub(crate) const CARD_SECRET: &str = "bench-card-callback-secret";
/// The clickers, all on the admin list.
pub(crate) const ADMINS: [&str; 4] = ["admin01", "admin02", "admin03", "admin04"];
