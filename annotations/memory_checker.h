// Whether compute-sanitizer's memory checker is attached to this process.
#pragma once

namespace gpushim {

// Detected by its injection library being loaded in the process (no driver call, no setting).
bool memory_checker_attached() noexcept;

}  // namespace gpushim
