// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

/// @title EventForger (TEST ONLY)
/// @notice Emits arbitrary raw logs, to feed the indexer untrusted or malformed events.
contract EventForger {
    /// @notice Emit a log with 0..4 topics and raw `data` (LOG0..LOG4 chosen by topics.length).
    function emitRaw(bytes32[] calldata topics, bytes calldata data) external {
        uint256 n = topics.length;
        require(n <= 4, "too many topics");
        bytes memory d = data;
        bytes32 t0;
        bytes32 t1;
        bytes32 t2;
        bytes32 t3;
        if (n > 0) t0 = topics[0];
        if (n > 1) t1 = topics[1];
        if (n > 2) t2 = topics[2];
        if (n > 3) t3 = topics[3];
        assembly {
            let p := add(d, 0x20)
            let len := mload(d)
            switch n
            case 0 { log0(p, len) }
            case 1 { log1(p, len, t0) }
            case 2 { log2(p, len, t0, t1) }
            case 3 { log3(p, len, t0, t1, t2) }
            default { log4(p, len, t0, t1, t2, t3) }
        }
    }

    /// @notice Emit several raw logs in one transaction (topics given per log).
    function emitMany(bytes32[][] calldata topicsList, bytes[] calldata dataList) external {
        require(topicsList.length == dataList.length, "length mismatch");
        for (uint256 i = 0; i < topicsList.length; ++i) {
            this.emitRaw(topicsList[i], dataList[i]);
        }
    }
}
