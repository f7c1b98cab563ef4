//! What [`GruAdvisor`](super::GruAdvisor) knows about one page: the page that faulted
//! after it, the record of that link, and which source prefetched it. These live in
//! the working-set order's record of the page ([`WorkingSet::data`]), beside its list
//! links, so the calls about one page meet one cache line instead of a hash table
//! each (docs/predictor.md, "Live, on a larger VM").
//!
//! [`WorkingSet::data`]: crate::baselines::WorkingSet::data

use tiering::access::PageNumber;

use super::Source;
use crate::gru::outcomes::Outcomes;
use crate::pagetable::NO_PAGE;

/// [`Source`] in a byte (0: none), so a page's facts fit half a cache line.
const NONE: u8 = 0;
const SUCCESSOR: u8 = 1;
const SUCCESSOR_UNTRIED: u8 = 2;
const TREND: u8 = 3;
const FIRST_TOUCH: u8 = 4;
const READAHEAD: u8 = 5;
const CONTEXT_READAHEAD: u8 = 6;
const PRIOR: u8 = 7;

/// The advisor's facts about one page.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageFacts {
    /// The page that faulted after this one last time (`NO_PAGE`: none).
    successor: PageNumber,
    /// The record of the link from this page, if `has_link`.
    link: Outcomes,
    /// For a page a successor link prefetched: the link's first page.
    origin_from: PageNumber,
    /// The source that prefetched the page while it is in RAM and not yet used.
    origin: u8,
    has_link: bool,
    /// Touched before (the first-touch sources' seen set holds it): the set is asked
    /// once per page, not at every fault.
    seen: bool,
    /// May be pending as a shadow candidate (`Shadows`): false means certainly not,
    /// so a fault or a prefetch of the page needs no look in that table.
    shadowed: bool,
}

impl Default for PageFacts {
    fn default() -> Self {
        PageFacts {
            successor: NO_PAGE,
            link: Outcomes::default(),
            origin_from: NO_PAGE,
            origin: NONE,
            has_link: false,
            seen: false,
            shadowed: false,
        }
    }
}

impl PageFacts {
    pub fn successor(&self) -> Option<PageNumber> {
        (self.successor != NO_PAGE).then_some(self.successor)
    }

    /// Sets the page that faulted next; whether the page had none before.
    pub fn set_successor(&mut self, next: PageNumber) -> bool {
        let new = self.successor == NO_PAGE;
        self.successor = next;
        new
    }

    /// The link's record, if it has one.
    pub fn link(&self) -> Option<Outcomes> {
        self.has_link.then_some(self.link)
    }

    /// The link's record, made empty if it had none.
    pub fn link_mut(&mut self) -> &mut Outcomes {
        if !self.has_link {
            self.has_link = true;
            self.link = Outcomes::default();
        }
        &mut self.link
    }

    /// Forgets the successor and its record (the tables start over).
    pub fn forget_link(&mut self) {
        self.successor = NO_PAGE;
        self.has_link = false;
    }

    pub fn origin(&self) -> Option<Source> {
        Some(match self.origin {
            NONE => return None,
            SUCCESSOR | SUCCESSOR_UNTRIED => Source::Successor {
                from: self.origin_from,
                untried: self.origin == SUCCESSOR_UNTRIED,
            },
            TREND => Source::Trend,
            FIRST_TOUCH => Source::FirstTouch,
            READAHEAD => Source::Readahead { context: false },
            CONTEXT_READAHEAD => Source::Readahead { context: true },
            _ => Source::Prior,
        })
    }

    pub fn set_origin(&mut self, source: Option<Source>) {
        self.origin = match source {
            None => NONE,
            Some(Source::Successor { from, untried }) => {
                self.origin_from = from;
                if untried {
                    SUCCESSOR_UNTRIED
                } else {
                    SUCCESSOR
                }
            }
            Some(Source::Trend) => TREND,
            Some(Source::FirstTouch) => FIRST_TOUCH,
            Some(Source::Readahead { context: false }) => READAHEAD,
            Some(Source::Readahead { context: true }) => CONTEXT_READAHEAD,
            Some(Source::Prior) => PRIOR,
        };
    }

    /// Marks the page touched; true if it was not before.
    pub fn mark_seen(&mut self) -> bool {
        !std::mem::replace(&mut self.seen, true)
    }

    /// Marks the page as (possibly) pending as a shadow candidate.
    pub fn mark_shadowed(&mut self) {
        self.shadowed = true;
    }

    /// Whether the page may be pending as a shadow candidate; clears the mark (the
    /// caller is about to end any judgement).
    pub fn take_shadowed(&mut self) -> bool {
        std::mem::take(&mut self.shadowed)
    }

    /// The source, forgotten here.
    pub fn take_origin(&mut self) -> Option<Source> {
        let source = self.origin();
        self.origin = NONE;
        source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_reads_back_as_written() {
        let sources = [
            Source::Successor {
                from: 7,
                untried: false,
            },
            Source::Successor {
                from: 0,
                untried: true,
            },
            Source::Trend,
            Source::FirstTouch,
            Source::Readahead { context: false },
            Source::Readahead { context: true },
            Source::Prior,
        ];
        let mut f = PageFacts::default();
        assert_eq!(f.origin(), None);
        for s in sources {
            f.set_origin(Some(s));
            assert_eq!(f.origin(), Some(s));
        }
        assert_eq!(f.take_origin(), Some(Source::Prior));
        assert_eq!(f.origin(), None);
        // Page 0 is a page like any other.
        assert!(f.set_successor(0));
        assert_eq!(f.successor(), Some(0));
        assert!(!f.set_successor(3));
        assert!(f.link().is_none());
        f.link_mut().record(true);
        assert_eq!(f.link().map(|l| l.used), Some(1));
        f.forget_link();
        assert_eq!((f.successor(), f.link().map(|l| l.used)), (None, None));
        assert!(f.mark_seen() && !f.mark_seen());
        assert!(!f.take_shadowed());
        f.mark_shadowed();
        assert!(f.take_shadowed() && !f.take_shadowed());
        assert!(std::mem::size_of::<PageFacts>() <= 32);
    }
}
