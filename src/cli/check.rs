//! `dingops check`'s list.

use crate::domain::printable;
use crate::ops::CheckItem;

/// The checklist as printed by `dingops check`.
pub fn render_check(items: &[CheckItem]) -> String {
    let mut out = String::new();
    for item in items {
        let mark = if item.ok { "✅" } else { "❌" };
        // Error messages in `what` can quote DingTalk's errmsg.
        out.push_str(&format!("{mark} {}\n", printable(&item.what)));
        if let Some(fix) = &item.fix {
            out.push_str(&format!("   fix: {}\n", printable(fix)));
        }
        if let Some(note) = &item.note {
            out.push_str(&format!("   note: {}\n", printable(note)));
        }
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        out.push_str("All checks passed.\n");
    } else {
        out.push_str(&format!("{failed} check(s) failed.\n"));
    }
    out
}
