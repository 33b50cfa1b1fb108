import Foundation

/// The benchmark's output: Markdown tables, one per section, printed to standard
/// output as each section finishes. Progress goes to standard error.
final class Report {
    private struct Row {
        let measurement: String
        let unit: String
        let median: String
        let range: String
        let spread: String
    }

    private var title = ""
    private var rows: [Row] = []
    private var notes: [String] = []

    func beginSection(_ title: String) {
        self.title = title
        rows = []
        notes = []
        progress("== \(title)")
    }

    /// Adds a row for a sample: its median, range and spread.
    func add(_ measurement: String, unit: String, _ summary: Summary, digits: Int? = nil) {
        rows.append(
            Row(
                measurement: measurement, unit: unit, median: format(summary.median, digits: digits),
                range: "\(format(summary.minimum, digits: digits)) – \(format(summary.maximum, digits: digits))",
                spread: String(format: "%.1f %%", summary.spread * 100)))
    }

    /// Adds a ratio taken within each round.
    func addRatio(_ measurement: String, _ summary: Summary) {
        add(measurement, unit: "ratio", summary, digits: 3)
    }

    /// Adds a single value, measured once.
    func add(_ measurement: String, unit: String, value: Double, digits: Int? = nil) {
        rows.append(Row(measurement: measurement, unit: unit, median: format(value, digits: digits), range: "", spread: ""))
    }

    /// Adds a line printed under the table.
    func note(_ text: String) {
        notes.append(text)
    }

    /// Prints the section's table and notes.
    func endSection() {
        var lines = ["", "### \(title)", ""]
        lines.append("| measurement | unit | median | min – max | spread |")
        lines.append("|---|---|--:|--:|--:|")
        for row in rows {
            lines.append("| \(row.measurement) | \(row.unit) | \(row.median) | \(row.range) | \(row.spread) |")
        }
        for note in notes {
            lines += ["", note]
        }
        print(lines.joined(separator: "\n"))
        fflush(nil)
    }

    private func format(_ value: Double, digits: Int?) -> String {
        if let digits {
            return String(format: "%.\(digits)f", value)
        }
        let magnitude = abs(value)
        if magnitude >= 100 {
            return String(format: "%.0f", value)
        }
        if magnitude >= 10 {
            return String(format: "%.1f", value)
        }
        return String(format: "%.2f", value)
    }
}

/// Writes a progress line to standard error.
func progress(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}
