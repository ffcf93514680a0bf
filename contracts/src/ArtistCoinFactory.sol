// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {ArtistCoin} from "./ArtistCoin.sol";

/// @title ArtistCoinFactory
/// @notice Deploys one ArtistCoin per artist (artist id = database UUID as bytes16).
contract ArtistCoinFactory {
    event ArtistCoinDeployed(bytes16 indexed artistId, address indexed contractAddress);

    /// @notice Deploy an ArtistCoin whose initial supply goes to the caller.
    function deployCoin(
        bytes16 artistId,
        string calldata name,
        string calldata symbol,
        uint256 initialSupply
    ) external returns (address) {
        ArtistCoin coin = new ArtistCoin(name, symbol, initialSupply, msg.sender);
        emit ArtistCoinDeployed(artistId, address(coin));
        return address(coin);
    }
}
