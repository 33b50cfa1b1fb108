import Foundation
import Synchronization

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// Runs `operation` on the calling thread until `seconds` have passed and returns
/// the operations per second. The operation in flight at the deadline is finished
/// and counted.
func measureRate(seconds: Double, _ operation: () throws -> Void) rethrows -> Double {
    let start = monotonicSeconds()
    var count = 0
    var elapsed = 0.0
    repeat {
        try operation()
        count += 1
        elapsed = monotonicSeconds() - start
    } while elapsed < seconds
    return Double(count) / elapsed
}

/// Runs `operations[i]` on thread `i`, all starting together, until `seconds` have
/// passed, and returns the operations per second of all threads together, measured
/// from the common start to the end of the last operation.
func measureParallelRate(seconds: Double, _ operations: [@Sendable () throws -> Void]) throws -> Double {
    if operations.count == 1 {
        return try measureRate(seconds: seconds, operations[0])
    }
    struct Shared {
        var count = 0
        var lastEnd = 0.0
        var error: Error?
    }
    let shared = Mutex(Shared())

    // Each thread waits for `start`, then works until the deadline that the
    // main thread stores just before it signals `start`.
    let ready = DispatchGroup()
    let done = DispatchGroup()
    let start = DispatchSemaphore(value: 0)
    let deadline = Atomic<UInt64>(0)
    for operation in operations {
        ready.enter()
        done.enter()
        let thread = Thread {
            ready.leave()
            start.wait()
            let end = Double(bitPattern: deadline.load(ordering: .acquiring))
            var count = 0
            var failure: Error?
            var finished = monotonicSeconds()

            while finished < end {
                do {
                    try operation()
                } catch {
                    failure = error
                    break
                }
                count += 1
                finished = monotonicSeconds()
            }

            shared.withLock { state in
                state.count += count
                state.lastEnd = max(state.lastEnd, finished)
                if state.error == nil, let failure {
                    state.error = failure
                }
            }
            done.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    ready.wait()
    let begin = monotonicSeconds()
    deadline.store((begin + seconds).bitPattern, ordering: .releasing)
    for _ in operations {
        start.signal()
    }
    done.wait()

    let result = shared.withLock { $0 }
    if let error = result.error {
        throw error
    }
    return Double(result.count) / (result.lastEnd - begin)
}

/// The median, minimum and maximum of a sample.
struct Summary {
    let median: Double
    let minimum: Double
    let maximum: Double

    init(_ values: [Double]) {
        precondition(!values.isEmpty, "a summary needs at least one value")
        let sorted = values.sorted()
        let middle = sorted.count / 2
        median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
        minimum = sorted[0]
        maximum = sorted[sorted.count - 1]
    }

    /// The range as a fraction of the median.
    var spread: Double { median == 0 ? 0 : (maximum - minimum) / median }
}

/// One side of an interleaved comparison: `measure` works for about the given
/// number of seconds and returns operations per second.
struct Contender {
    let name: String
    let measure: (Double) throws -> Double
}

/// The rates of each contender, one per round, in round order.
struct ComparisonResult {
    let names: [String]
    let rates: [[Double]]

    func summary(_ name: String) -> Summary {
        Summary(rates[index(name)])
    }

    /// Returns the rate of `numerator` over the rate of `denominator`, taken within each round.
    func ratio(_ numerator: String, over denominator: String) -> Summary {
        let top = rates[index(numerator)]
        let bottom = rates[index(denominator)]
        return Summary(zip(top, bottom).map { $0 / $1 })
    }

    private func index(_ name: String) -> Int {
        guard let index = names.firstIndex(of: name) else {
            preconditionFailure("no contender named \(name)")
        }
        return index
    }
}

/// How long each contender runs: one untimed warm-up, then `rounds` timed runs.
struct Schedule {
    let rounds: Int
    let seconds: Double
    let warmUpSeconds: Double

}

/// Measures the contenders in turns: every round runs each contender once, and the
/// order rotates from round to round, so a slow phase of a noisy machine hits all
/// of them and a ratio taken within one round stays fair.
func compare(_ contenders: [Contender], _ schedule: Schedule) throws -> ComparisonResult {
    for contender in contenders {
        _ = try contender.measure(schedule.warmUpSeconds)
    }
    var rates = [[Double]](repeating: [], count: contenders.count)
    for round in 0..<schedule.rounds {
        for offset in 0..<contenders.count {
            let index = (round + offset) % contenders.count
            rates[index].append(try contenders[index].measure(schedule.seconds))
        }
    }
    return ComparisonResult(names: contenders.map(\.name), rates: rates)
}

/// Times `operation` `repetitions` times and returns the durations in seconds.
func measureDurations(_ repetitions: Int, _ operation: () throws -> Void) rethrows -> [Double] {
    var durations: [Double] = []
    for _ in 0..<repetitions {
        let start = monotonicSeconds()
        try operation()
        durations.append(monotonicSeconds() - start)
    }
    return durations
}
