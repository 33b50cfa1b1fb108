import Testing
import TokenStore

@Suite("Hex thumbprints")
struct HexTests {
    @Test("parses the spellings Windows and OpenSSL print")
    func spellings() {
        let expected: [UInt8] = [0xFA, 0xCA, 0x82, 0x94]
        #expect(bytes(fromHex: "FACA8294") == expected)
        #expect(bytes(fromHex: "fa ca 82 94") == expected)
        #expect(bytes(fromHex: "FA:CA:82:94") == expected)
        #expect(bytes(fromHex: "\u{200E}faca8294") == expected)
    }

    @Test("rejects other text", arguments: ["FACA829", "FACA82G4", "thumb", "fa-ca"])
    func rejects(_ text: String) {
        #expect(bytes(fromHex: text) == nil)
    }

    @Test("prints upper case")
    func prints() {
        #expect(hexString([0x0a, 0xff]) == "0AFF")
        #expect(hexString([0x0a, 0xff], uppercase: false) == "0aff")
    }
}
