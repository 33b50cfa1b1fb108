/// A usage error: an unknown option, a missing value or a bad argument.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Command-line arguments split into options and operands.
///
/// Options are declared up front: `flags` take no value, `valued` take one, either
/// as the next argument or after `=`. Repeatable options keep every value.
/// `--` ends option parsing.
struct Arguments {
    private(set) var operands: [String] = []
    private var values: [String: [String]] = [:]
    private var present: Set<String> = []

    init(_ arguments: [String], flags: Set<String>, valued: Set<String>) throws {
        var index = 0
        var optionsEnded = false
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if optionsEnded || !argument.hasPrefix("-") || argument == "-" {
                operands.append(argument)
                continue
            }
            if argument == "--" {
                optionsEnded = true
                continue
            }
            var name = argument
            var inlineValue: String?
            if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                inlineValue = String(argument[argument.index(after: equals)...])
            }
            if flags.contains(name) {
                guard inlineValue == nil else {
                    throw UsageError("option \(name) takes no value")
                }
                present.insert(name)
            } else if valued.contains(name) {
                let value: String
                if let inlineValue {
                    value = inlineValue
                } else {
                    guard index < arguments.count else {
                        throw UsageError("option \(name) needs a value")
                    }
                    value = arguments[index]
                    index += 1
                }
                present.insert(name)
                values[name, default: []].append(value)
            } else {
                throw UsageError("unknown option \(name): see 'tokentls help'")
            }
        }
    }

    func has(_ name: String) -> Bool { present.contains(name) }

    /// The last value given for `name`, so that a later option overrides an earlier one.
    func value(_ name: String) -> String? { values[name]?.last }

    func allValues(_ name: String) -> [String] { values[name] ?? [] }

    /// The last value of the first of `names` that was given.
    func value(_ names: String...) -> String? {
        for name in names {
            if let value = values[name]?.last { return value }
        }
        return nil
    }

    func has(_ names: String...) -> Bool { names.contains { present.contains($0) } }
}
